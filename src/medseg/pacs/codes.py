"""``--label-codes FILE`` for the PACS commands: see :mod:`medseg.io.label_codes` (where codes come from)."""

from medseg.io.label_codes import load_label_codes

__all__ = ["load_label_codes"]
