"""The node agent (`ckq agent --node NAME`): dumps this node's containers for in-flight Checkpoints
through each container's ckq-run control socket and records the artifacts in the Checkpoint's status.

dump.py is the step that talks to ckq-run (no API server needed); plan.py the pure decisions and status
merges; kube.py the API server access; agent.py the informers, work queue and workers.
"""
