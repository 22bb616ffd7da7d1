"""Independent PSD/PSB readers for the tests: :func:`check_psd` and :func:`psdcheck` (see ``check.py``)."""

from .check import check_psd, psdcheck, reader_missing

__all__ = ["check_psd", "psdcheck", "reader_missing"]
