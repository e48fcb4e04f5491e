"""ct-ray: CompressTracker on Ray and MLflow."""
__version__ = "0.1.0"
