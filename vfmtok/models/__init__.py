"""vfmtok.models."""
