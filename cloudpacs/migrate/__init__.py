"""`cloudpacs migrate`: copy an archive from another PACS into this one.

source.py      the DICOMweb server copied from (QIDO-RS, WADO-RS as stored)
migration.py   study by study, resumable, through the one ingest()
report.py      reconciliation: counts per study, checksums per instance
"""
