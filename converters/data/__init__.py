"""The data sets shipped with the package: the parity set (held out) and the calibration set (int8 fitting).

    parity/        14 photographs and 35 Chinese captions; parity compares every artifact with PyTorch on them
    calibration/   other photos and captions; the int8 stages fit their scales on them, never on the parity set
"""

from pathlib import Path

PARITY_SET_DIR = Path(__file__).resolve().parent / "parity"
CALIBRATION_SET_DIR = Path(__file__).resolve().parent / "calibration"
