"""cloudpacs: a cloud research PACS with a DICOMweb API over MongoDB and GridFS."""

__version__ = "0.1.0"
