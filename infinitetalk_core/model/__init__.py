"""The Wan2.1 I2V DiT with InfiniteTalk's audio modules, its config detection and its loaders."""
