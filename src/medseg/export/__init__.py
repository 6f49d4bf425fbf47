"""Exports of a bundle: ONNX networks with a parity check (:mod:`medseg.export.onnx`) and DICOM SEG masks
(:mod:`medseg.export.dicom_seg`)."""
