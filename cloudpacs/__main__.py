from cloudpacs.cli import main

raise SystemExit(main())
