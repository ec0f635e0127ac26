"""SNP-S3: shared network pre-training and significant semantic strengthening."""

__version__ = "0.1.0"
