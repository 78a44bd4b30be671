"""The queue controller: kopf handlers feed a cache, one loop decides with the pure engine and acts through
the Kubernetes API. `controller.py` names the module of each concern."""
