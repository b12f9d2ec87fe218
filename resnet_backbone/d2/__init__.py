"""Detectron2 adapters: the builders that turn ``cfg.MODEL.*`` into the plugin's modules (modeling/ itself sees
keyword arguments only), registered in detectron2's registries, and the detector layouts of classifier weights."""
