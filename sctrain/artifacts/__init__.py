"""What training hands to deployment, on the lowest floor of the package: the ``best_sc.pt`` schema
(:mod:`~sctrain.artifacts.best`), safe atomic checkpoint files (:mod:`~sctrain.artifacts.files`), the label
vocabulary (:mod:`~sctrain.artifacts.labels`) and the detector rules stored with the thresholds
(:mod:`~sctrain.artifacts.detector`). Training writes these, inference and export read them; this package imports
neither (only torch and :mod:`sctrain.utils`)."""
