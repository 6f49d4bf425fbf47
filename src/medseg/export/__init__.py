"""Exports of a bundle: ONNX networks with a parity check (:mod:`medseg.export.onnx`).

DICOM SEG output is not here: it is a file format, written by :func:`medseg.io.dicom_seg.write_dicom_seg`.
"""
