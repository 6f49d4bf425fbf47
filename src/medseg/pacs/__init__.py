"""Into the hospital: medseg as a DICOM node next to a PACS.

* :func:`~medseg.pacs.segment.segment_series`: the one job, slice datasets in, a DICOM SEG dataset out.
* :class:`~medseg.pacs.node.DicomNode`: C-ECHO / C-STORE SCP that segments each series it receives and C-STOREs the
  SEG to a destination (``medseg dicom-node``).
* :class:`~medseg.pacs.dicomweb.DicomWebWorker`: QIDO-RS / WADO-RS / STOW-RS against a DICOMweb server, each store
  confirmed by QIDO-RS (``medseg dicomweb``).
* :class:`~medseg.pacs.pull.DicomPuller`: C-FIND / C-MOVE from a PACS into a running node, each SEG confirmed by
  C-FIND (``medseg dicom-pull``).
* :func:`~medseg.pacs.rules.load_rules`: which model runs on which series; :func:`~medseg.pacs.codes.load_label_codes`:
  ``--label-codes FILE``.

This package uses :mod:`medseg.infer`, :mod:`medseg.io` and :mod:`medseg.bundle`; only the CLI uses it.
"""

from medseg.pacs.codes import load_label_codes
from medseg.pacs.dicomweb import DicomWebWorker, SeriesOutcome
from medseg.pacs.node import Destination, DicomNode, parse_destination
from medseg.pacs.pull import DicomPuller
from medseg.pacs.rules import RuleSet, load_rules
from medseg.pacs.segment import segment_series, series_image, short_hash

__all__ = ["Destination", "DicomNode", "DicomPuller", "DicomWebWorker", "RuleSet", "SeriesOutcome", "load_label_codes",
           "load_rules", "parse_destination", "segment_series", "series_image", "short_hash"]
