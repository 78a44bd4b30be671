# ruff: noqa: E501  (kwok templates are kept on one line each, as upstream writes them)
"""kwok Stages: how fake nodes and the pods on them move through their lifecycle.

kwok v0.8 ships no default stages when run standalone, so ckq passes all of them with --config.
Selectors are mutually exclusive, so exactly one stage applies to an object at a time.
Adapted from kwok's kustomize/stage/{node/fast,node/heartbeat-with-lease,pod/fast} (Apache-2.0).
"""

from __future__ import annotations

from queue_controller.devcluster.constants import (
    EXIT_CODE_ANNOTATION,
    NODE_READY_ANNOTATION,
    RUN_SECONDS_ANNOTATION,
)

_NODE_CONDITIONS_HEALTHY = """\
      {{ $now := Now }}
      {{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $lastTransitionTime | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type | Quote }}
      {{ end }}
"""

# Node made Ready (and given defaults) when it is not Ready and not held NotReady on purpose.
NODE_INITIALIZE = f"""\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-initialize
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values: ['True']
    - key: '.metadata.annotations["{NODE_READY_ANNOTATION}"]'
      operator: 'NotIn'
      values: ['false']
  next:
    statusTemplate: |
{_NODE_CONDITIONS_HEALTHY}
      {{{{ $hasInternalIP := false }}}}
      {{{{ range .status.addresses }}}}{{{{ if eq .type "InternalIP" }}}}{{{{ $hasInternalIP = true }}}}{{{{ end }}}}{{{{ end }}}}
      {{{{ if not $hasInternalIP }}}}
      addresses:
      {{{{ with NodeIP }}}}
      - address: {{{{ . | Quote }}}}
        type: InternalIP
      {{{{ end }}}}
      {{{{ with NodeName }}}}
      - address: {{{{ . | Quote }}}}
        type: Hostname
      {{{{ end }}}}
      {{{{ end }}}}
      allocatable:
      {{{{ with .status.allocatable }}}}
      {{{{ YAML . 1 }}}}
      {{{{ else }}}}
        cpu: 1k
        memory: 1Ti
        pods: 1M
      {{{{ end }}}}
      capacity:
      {{{{ with .status.capacity }}}}
      {{{{ YAML . 1 }}}}
      {{{{ else }}}}
        cpu: 1k
        memory: 1Ti
        pods: 1M
      {{{{ end }}}}
      {{{{ $nodeInfo := .status.nodeInfo }}}}
      {{{{ $kwokVersion := printf "kwok-%s" Version }}}}
      nodeInfo:
        architecture: {{{{ or $nodeInfo.architecture "amd64" }}}}
        bootID: {{{{ or $nodeInfo.bootID `""` }}}}
        containerRuntimeVersion: {{{{ or $nodeInfo.containerRuntimeVersion $kwokVersion }}}}
        kernelVersion: {{{{ or $nodeInfo.kernelVersion $kwokVersion }}}}
        kubeProxyVersion: {{{{ or $nodeInfo.kubeProxyVersion $kwokVersion }}}}
        kubeletVersion: {{{{ or $nodeInfo.kubeletVersion $kwokVersion }}}}
        machineID: {{{{ or $nodeInfo.machineID `""` }}}}
        operatingSystem: {{{{ or $nodeInfo.operatingSystem "linux" }}}}
        osImage: {{{{ or $nodeInfo.osImage `""` }}}}
        systemUUID: {{{{ or $nodeInfo.systemUUID `""` }}}}
      phase: Running
"""

# Periodic status heartbeat of Ready nodes (liveness itself comes from kwok renewing node Leases).
NODE_HEARTBEAT = f"""\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-heartbeat-with-lease
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'In'
      values: ['True']
    - key: '.metadata.annotations["{NODE_READY_ANNOTATION}"]'
      operator: 'NotIn'
      values: ['false']
  delay:
    durationMilliseconds: 600000
    jitterDurationMilliseconds: 610000
  next:
    statusTemplate: |
{_NODE_CONDITIONS_HEALTHY}
"""

# Simulated node failure: the node keeps its lease but reports Ready=False, as a kubelet would
# whose runtime broke. KCM then taints it not-ready and, later, evicts its pods.
NODE_NOT_READY = f"""\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-not-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.metadata.annotations["{NODE_READY_ANNOTATION}"]'
      operator: 'In'
      values: ['false']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values: ['False']
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      conditions:
      {{{{ range NodeConditions }}}}
      - lastHeartbeatTime: {{{{ $now | Quote }}}}
        lastTransitionTime: {{{{ $now | Quote }}}}
        {{{{ if eq .type "Ready" }}}}
        message: "simulated failure ({NODE_READY_ANNOTATION}=false)"
        reason: "KwokSimulatedNotReady"
        status: "False"
        {{{{ else }}}}
        message: {{{{ .message | Quote }}}}
        reason: {{{{ .reason | Quote }}}}
        status: {{{{ .status | Quote }}}}
        {{{{ end }}}}
        type: {{{{ .type | Quote }}}}
      {{{{ end }}}}
"""

# Bound pods start running at once (kwok only acts on pods of the nodes it manages).
POD_READY = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Pending']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values: ['True']
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: ContainersReady
      {{ range .spec.readinessGates }}
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: {{ .conditionType | Quote }}
      {{ end }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        started: true
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
      initContainerStatuses:
      {{ range .spec.initContainers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        state:
          terminated:
            exitCode: 0
            finishedAt: {{ $now | Quote }}
            reason: Completed
            startedAt: {{ $now | Quote }}
      {{ end }}
      {{ $hostIPs := NodeIPsWith .spec.nodeName }}
      {{ with $hostIPs }}
      hostIP: {{ index . 0 | Quote }}
      hostIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      {{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
      {{ with $podIPs }}
      podIP: {{ index . 0 | Quote }}
      podIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      phase: Running
      startTime: {{ $now | Quote }}
"""

_POD_FINISHED = """\
      {{ $now := Now }}
      {{ $annotations := or .metadata.annotations dict }}
      {{ $code := or ( index $annotations "@EXIT_CODE_ANNOTATION@" ) "0" }}
      {{ $started := or .status.startTime $now }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: {{ $code }}
            finishedAt: {{ $now | Quote }}
            reason: {{ if eq $code "0" }}Completed{{ else }}Error{{ end }}
            startedAt: {{ $started | Quote }}
      {{ end }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        reason: PodCompleted
        status: "False"
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        reason: PodCompleted
        status: "False"
        type: ContainersReady
      phase: {{ if eq $code "0" }}Succeeded{{ else }}Failed{{ end }}
""".replace("@EXIT_CODE_ANNOTATION@", EXIT_CODE_ANNOTATION)

# A running pod with the run-seconds annotation finishes N seconds (fractional: "0.2") after it started
# running, to the millisecond. kwok reads durationFrom's jq result as an RFC 3339 deadline or as a Go
# duration ("200ms") counted from when the stage matched the pod, i.e. when kwok saw it Running; a
# deadline cannot be sub-second here, because .status.startTime has 1 s resolution. So the delay is
# the duration N, capped by the absolute deadline startTime + N + 1 s (startTime is truncated, so the
# true start lies within that second): on a fresh Running pod the cap is never below N, while after a
# kwok restart, or an update that makes kwok match the pod again, the pod still finishes on time, at
# most 1 s late, instead of running N seconds more.
RUN_SECONDS_DELAY_JQ = (
    f'(.metadata.annotations["{RUN_SECONDS_ANNOTATION}"] | tonumber) as $run'
    ' | ((.status.startTime | fromdate) + $run + 1 - now) as $cap'
    ' | ([$run, $cap] | min) * 1000 | floor | tostring + "ms"'
)
POD_COMPLETE_AFTER = f"""\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-complete-after-run-seconds
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.status.startTime'
      operator: 'Exists'
    - key: '.metadata.annotations["{RUN_SECONDS_ANNOTATION}"]'
      operator: 'Exists'
  delay:
    durationMilliseconds: 0
    durationFrom:
      jq:
        expression: '{RUN_SECONDS_DELAY_JQ}'
  next:
    statusTemplate: |
{_POD_FINISHED}"""

# Pods of a batch/v1 Job without the annotation complete at once: kwok's own default behaviour.
POD_COMPLETE_JOB = f"""\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-complete-job
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.metadata.ownerReferences.[].kind'
      operator: 'In'
      values: ['Job']
    - key: '.metadata.annotations["{RUN_SECONDS_ANNOTATION}"]'
      operator: 'DoesNotExist'
  next:
    statusTemplate: |
{_POD_FINISHED}"""

# No kubelet: a pod being deleted is removed at once (what a kubelet does after the grace period).
POD_DELETE = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-delete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
  next:
    delete: true
"""

ALL_STAGES = (
    NODE_INITIALIZE,
    NODE_HEARTBEAT,
    NODE_NOT_READY,
    POD_READY,
    POD_COMPLETE_AFTER,
    POD_COMPLETE_JOB,
    POD_DELETE,
)


def stages_yaml() -> str:
    """All stages as one multi-document YAML, the form kwok's --config reads."""
    return "---\n".join(ALL_STAGES)
