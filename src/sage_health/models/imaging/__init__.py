"""The chest X-ray image model: image quality checks and pixel loading (``quality``), the ``ImageEncoder``
extension point and its MONAI DenseNet121 backend (``encoder``), and training from the store (``training``)."""
