{{/* Names, labels and the values → strata.yaml translation shared by the templates. */}}

{{- define "strata.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-strata, or the release name alone when it already contains the chart name. At
     most 47 characters: "<name>-etcd" names a StatefulSet, which Kubernetes allows 52 (its
     pods' controller-revision-hash label adds 11), and "<name>-etcd-headless" a Service (63). */}}
{{- define "strata.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 47 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "strata.headless" -}}{{ include "strata.fullname" . }}-headless{{- end -}}
{{- define "strata.etcdName" -}}{{ include "strata.fullname" . }}-etcd{{- end -}}
{{- define "strata.etcdHeadless" -}}{{ include "strata.fullname" . }}-etcd-headless{{- end -}}

{{- define "strata.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "strata.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "store"). */}}
{{- define "strata.selectorLabels" -}}
app.kubernetes.io/name: {{ include "strata.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "strata.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* A quantity with a binary suffix (512Mi, 8Gi, 2Ti) in MiB, as an integer. */}}
{{- define "strata.mib" -}}
{{- $q := toString . -}}
{{- $n := regexFind "^[0-9]+" $q -}}
{{- $unit := trimPrefix $n $q -}}
{{- if not $n -}}
{{- fail (printf "size %q: want a quantity such as 512Mi, 8Gi or 2Ti" $q) -}}
{{- end -}}
{{- if eq $unit "Mi" -}}{{ int64 $n }}
{{- else if eq $unit "Gi" -}}{{ mul (int64 $n) 1024 }}
{{- else if eq $unit "Ti" -}}{{ mul (int64 $n) 1048576 }}
{{- else -}}
{{- fail (printf "size %q: use a binary suffix Mi, Gi or Ti" $q) -}}
{{- end -}}
{{- end -}}

{{/* A block charge (64Ki, 2Mi) in KiB, as an integer. */}}
{{- define "strata.kib" -}}
{{- $q := toString . -}}
{{- $n := regexFind "^[0-9]+" $q -}}
{{- $unit := trimPrefix $n $q -}}
{{- if and $n (eq $unit "Ki") -}}{{ int64 $n }}
{{- else if and $n (eq $unit "Mi") -}}{{ mul (int64 $n) 1024 }}
{{- else -}}
{{- fail (printf "size %q: want a quantity such as 64Ki or 2Mi" $q) -}}
{{- end -}}
{{- end -}}

{{/*
RAM for the tiers' indexes, in MiB: every block takes at least min_block_charge of its tier's
budget, so the tiers hold at most (warm + cool + cold budgets) / charge blocks, and each costs
about 1 KiB of RAM (index entry, policy node and RocksDB memtable: docs/design/tiers.md,
"Index memory"). With the budgets in MiB and the charge in KiB that is budgets / charge MiB.
*/}}
{{- define "strata.indexMib" -}}
{{- $s := .Values.store -}}
{{- $budgets := include "strata.mib" $s.warm.size | int64 -}}
{{- if $s.cool.enabled -}}
{{- $budgets = add $budgets (include "strata.tierBudgetMib" $s.cool) -}}
{{- end -}}
{{- if $s.cold.enabled -}}
{{- $budgets = add $budgets (include "strata.tierBudgetMib" $s.cold) -}}
{{- end -}}
{{- $charge := include "strata.chargeKib" $s | int64 -}}
{{- div (sub (add $budgets $charge) 1) $charge -}}
{{- end -}}

{{/*
The node's max_block_bytes in KiB, from the store values: its default 16 MiB, or
store.config.max_block_bytes (bytes, or a size with KiB/MiB/GiB or Ki/Mi/Gi).
*/}}
{{- define "strata.maxBlockKib" -}}
{{- $maxKib := 16384 -}}
{{- if hasKey .config "max_block_bytes" -}}
{{- $q := toString (index .config "max_block_bytes") -}}
{{- $n := regexFind "^[0-9]+" $q -}}
{{- $unit := trimSuffix "B" (trimPrefix $n $q) -}}
{{- if not $n -}}
{{- fail (printf "store.config.max_block_bytes %q: want bytes or a size such as 4MiB" $q) -}}
{{- else if eq $unit "" -}}{{- $maxKib = div (int64 $n) 1024 -}}
{{- else if eq $unit "Ki" -}}{{- $maxKib = int64 $n -}}
{{- else if eq $unit "Mi" -}}{{- $maxKib = mul (int64 $n) 1024 -}}
{{- else if eq $unit "Gi" -}}{{- $maxKib = mul (int64 $n) 1048576 -}}
{{- else -}}
{{- fail (printf "store.config.max_block_bytes %q: use bytes or a KiB, MiB or GiB size" $q) -}}
{{- end -}}
{{- end -}}
{{- $maxKib -}}
{{- end -}}

{{/* The charge the node applies, in KiB: minBlockCharge, at most max_block_bytes. */}}
{{- define "strata.chargeKib" -}}
{{- $charge := include "strata.kib" .minBlockCharge | int64 -}}
{{- max 1 (min $charge (include "strata.maxBlockKib" . | int64)) -}}
{{- end -}}

{{/* A disk tier's byte budget in MiB: its volume × budgetPct / 100. */}}
{{- define "strata.tierBudgetMib" -}}
{{- div (mul (include "strata.mib" .size | int64) (int .budgetPct)) 100 -}}
{{- end -}}

{{/* A quantity as the node writes byte sizes: 8Gi → 8GiB. */}}
{{- define "strata.nodeBytes" -}}
{{- $mib := include "strata.mib" . -}}
{{- printf "%sB" (toString .) -}}
{{- end -}}

{{/* A scalar value for strata.yaml: whole numbers without exponent, the rest as text. */}}
{{- define "strata.scalar" -}}
{{- if kindIs "map" . -}}
{{- fail "store.config: values must be scalars" -}}
{{- else if kindIs "slice" . -}}
{{- fail "store.config: values must be scalars" -}}
{{- else if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}
{{- printf "%d" (int64 .) -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{- define "strata.storeDns" -}}
{{- printf "%s.%s.svc.%s" (include "strata.headless" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* etcd endpoints as the bundled or external cluster serves them (host:port,...). */}}
{{- define "strata.etcdServerEndpoints" -}}
{{- if .Values.etcd.bundled -}}
{{- $eps := list -}}
{{- $dns := printf "%s.%s.svc.%s" (include "strata.etcdHeadless" .) .Release.Namespace .Values.clusterDomain -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $eps = append $eps (printf "%s-%d.%s:2379" (include "strata.etcdName" $) $i $dns) -}}
{{- end -}}
{{- join "," $eps -}}
{{- else -}}
{{- if not .Values.etcd.external.endpoints -}}
{{- fail "etcd.bundled is false: set etcd.external.endpoints (host:port of every member)" -}}
{{- end -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- end -}}
{{- end -}}

{{/* What a node or worker dials: the pod-local grpc-proxy with TLS, etcd itself without. */}}
{{- define "strata.etcdDialEndpoints" -}}
{{- if .Values.etcd.tls.enabled -}}
{{- printf "127.0.0.1:%d" (int .Values.etcd.tls.proxyPort) -}}
{{- else -}}
{{- include "strata.etcdServerEndpoints" . -}}
{{- end -}}
{{- end -}}

{{- define "strata.terminationGracePeriodSeconds" -}}
{{- $s := .Values.store -}}
{{- add (int $s.preStopSleepSeconds) (int $s.drainTimeoutSeconds) (int $s.shutdownMarginSeconds) -}}
{{- end -}}

{{/* Every key of strata.yaml the chart sets, as a dict of strings. */}}
{{- define "strata.nodeConfig" -}}
{{- $s := .Values.store -}}
{{- $mode := .Values.cluster.mode -}}
{{- $c := dict
  "listen" (printf "0.0.0.0:%d" (int $s.ports.grpc))
  "http_listen" (printf "0.0.0.0:%d" (int $s.ports.http))
  "log_level" $s.logLevel
  "warm_bytes" (include "strata.nodeBytes" $s.warm.size)
  "warm_prefault" (toString $s.warm.prefault)
  "min_block_charge" (printf "%dKiB" (include "strata.kib" $s.minBlockCharge | int64))
  "warm_policy" $s.warm.policy
  "warm_high_watermark_pct" (toString (int $s.warm.highWatermarkPct))
  "warm_low_watermark_pct" (toString (int $s.warm.lowWatermarkPct))
  "ucx_tls" $s.ucx.tls
  "ucx_lanes" (toString (int $s.ucx.lanes))
  "drain_timeout" (printf "%ds" (int $s.drainTimeoutSeconds))
  "cluster_mode" $mode
  "cluster_name" .Values.cluster.name
  "auth_mode" $s.auth.mode
-}}
{{- /* What the node would refuse at start (every pod crash-looping): refused here. */ -}}
{{- if ge (int $s.warm.lowWatermarkPct) (int $s.warm.highWatermarkPct) -}}
{{- fail (printf "store.warm.lowWatermarkPct %d: want below highWatermarkPct %d" (int $s.warm.lowWatermarkPct) (int $s.warm.highWatermarkPct)) -}}
{{- end -}}
{{- if lt (mul (include "strata.mib" $s.warm.size | int64) 1024) (include "strata.maxBlockKib" $s | int64) -}}
{{- fail (printf "store.warm.size %s: want at least max_block_bytes (%d KiB; the warm arena holds one block at least)" (toString $s.warm.size) (include "strata.maxBlockKib" $s | int64)) -}}
{{- end -}}
{{- range $tier := list "cool" "cold" -}}
{{- $t := index $s $tier -}}
{{- if and $t.enabled (lt (include "strata.tierBudgetMib" $t | int64) 1) -}}
{{- fail (printf "store.%s.size %s x budgetPct %d%%: under 1 MiB for the tier" $tier (toString $t.size) (int $t.budgetPct)) -}}
{{- end -}}
{{- end -}}
{{- if and $s.cool.enabled (ge (int $s.diskLowWatermarkPct) (int $s.diskHighWatermarkPct)) -}}
{{- fail (printf "store.diskLowWatermarkPct %d: want below diskHighWatermarkPct %d" (int $s.diskLowWatermarkPct) (int $s.diskHighWatermarkPct)) -}}
{{- end -}}
{{- if $s.cool.enabled -}}
{{- $_ := set $c "cool_path" "/var/lib/strata/cool/rocksdb" -}}
{{- $_ := set $c "cool_bytes" (printf "%sMiB" (include "strata.tierBudgetMib" $s.cool)) -}}
{{- $_ := set $c "cool_codec" $s.cool.codec -}}
{{- $_ := set $c "cool_policy" $s.cool.policy -}}
{{- $_ := set $c "disk_high_watermark_pct" (toString (int $s.diskHighWatermarkPct)) -}}
{{- $_ := set $c "disk_low_watermark_pct" (toString (int $s.diskLowWatermarkPct)) -}}
{{- end -}}
{{- if $s.cold.enabled -}}
{{- if not $s.cool.enabled -}}
{{- fail "store.cold.enabled needs store.cool.enabled (a cold tier sits below the cool tier)" -}}
{{- end -}}
{{- $_ := set $c "cold_path" "/var/lib/strata/cold/rocksdb" -}}
{{- $_ := set $c "cold_bytes" (printf "%sMiB" (include "strata.tierBudgetMib" $s.cold)) -}}
{{- $_ := set $c "cold_codec" $s.cold.codec -}}
{{- $_ := set $c "cold_policy" $s.cold.policy -}}
{{- end -}}
{{- if eq $mode "single" -}}
{{- if ne (int $s.replicas) 1 -}}
{{- fail "cluster.mode single runs one node: set store.replicas to 1 (or use etcd/static)" -}}
{{- end -}}
{{- else -}}
{{- if gt (int .Values.cluster.replicas) (int $s.replicas) -}}
{{- fail (printf "cluster.replicas %d exceeds store.replicas %d" (int .Values.cluster.replicas) (int $s.replicas)) -}}
{{- end -}}
{{- $_ := set $c "cluster_replicas" (toString (int .Values.cluster.replicas)) -}}
{{- $_ := set $c "rebalance_interval" .Values.cluster.rebalanceInterval -}}
{{- if .Values.cluster.rebalanceSettle -}}
{{- $_ := set $c "rebalance_settle" .Values.cluster.rebalanceSettle -}}
{{- end -}}
{{- end -}}
{{- if eq $mode "etcd" -}}
{{- $_ := set $c "etcd_endpoints" (include "strata.etcdDialEndpoints" .) -}}
{{- $_ := set $c "etcd_lease" .Values.cluster.etcdLease -}}
{{- else if eq $mode "static" -}}
{{- $members := list -}}
{{- range $i := until (int $s.replicas) -}}
{{- $pod := printf "%s-%d" (include "strata.fullname" $) $i -}}
{{- $members = append $members (printf "%s=%s.%s:%d" $pod $pod (include "strata.storeDns" $) (int $s.ports.grpc)) -}}
{{- end -}}
{{- $_ := set $c "cluster_members" (join "," $members) -}}
{{- end -}}
{{- if $s.tls.enabled -}}
{{- if not $s.tls.secretName -}}
{{- fail "store.tls.enabled: set store.tls.secretName (a kubernetes.io/tls Secret)" -}}
{{- end -}}
{{- $_ := set $c "tls_cert" "/etc/strata/tls/tls.crt" -}}
{{- $_ := set $c "tls_key" "/etc/strata/tls/tls.key" -}}
{{- if $s.tls.clientCaSecretName -}}
{{- $_ := set $c "tls_client_ca" "/etc/strata/client-ca/ca.crt" -}}
{{- end -}}
{{- if $s.tls.requireClientCert -}}
{{- if not $s.tls.clientCaSecretName -}}
{{- fail "store.tls.requireClientCert needs store.tls.clientCaSecretName" -}}
{{- end -}}
{{- $_ := set $c "tls_require_client_cert" "true" -}}
{{- end -}}
{{- end -}}
{{- if eq $s.auth.mode "required" -}}
{{- if not $s.auth.principalsSecret -}}
{{- fail "store.auth.mode required: set store.auth.principalsSecret" -}}
{{- end -}}
{{- $_ := set $c "auth_principals_file" "/etc/strata/principals/principals.yaml" -}}
{{- end -}}
{{- if ne $mode "single" -}}
{{- /* Nodes of a cluster call each other (rebalancing): ValidateNodeConfig demands both. */ -}}
{{- if and (eq $s.auth.mode "required") (not $s.auth.clusterTokenSecret.name) -}}
{{- fail "store.auth.clusterTokenSecret.name: auth mode required in a cluster needs the token nodes present to each other" -}}
{{- end -}}
{{- if and $s.tls.enabled (not $s.tls.clientCaSecretName) -}}
{{- fail "store.tls.clientCaSecretName: a TLS cluster needs it (nodes verify each other's certificates)" -}}
{{- end -}}
{{- end -}}
{{- $known := list -}}
{{- range $line := splitList "\n" (.Files.Get "files/node-config-keys.txt") -}}
{{- if and (trim $line) (not (hasPrefix "#" $line)) -}}
{{- $known = append $known (trim $line) -}}
{{- end -}}
{{- end -}}
{{- range $key, $value := $s.config -}}
{{- /* The node refuses an unknown key at start: every pod would crash-loop. */ -}}
{{- if not (has $key $known) -}}
{{- fail (printf "store.config.%s: not an option of strata-storenode (a typo? its --help lists them)" $key) -}}
{{- end -}}
{{- if has $key (list "node_id" "zone" "advertise_address" "port_file") -}}
{{- fail (printf "store.config.%s: set per pod by the chart" $key) -}}
{{- end -}}
{{- if has $key (list "cluster_token" "tls_key") -}}
{{- fail (printf "store.config.%s: a secret; use store.auth.clusterTokenSecret / store.tls" $key) -}}
{{- end -}}
{{- /* The chart derives other objects from these (memory limit, probes, grace period, volumes):
       an override here would silently disagree with them. */ -}}
{{- if hasKey $c $key -}}
{{- fail (printf "store.config.%s: set by the chart from its values (see values.yaml); set it there" $key) -}}
{{- end -}}
{{- $_ := set $c $key (include "strata.scalar" $value) -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}

{{/*
The etcd grpc-proxy as a native sidecar (an init container that keeps running): the pod's
processes dial 127.0.0.1:<proxyPort> in plaintext, the proxy dials etcd with mTLS.
*/}}
{{- define "strata.etcdProxySidecar" -}}
- name: etcd-proxy
  image: "{{ .Values.etcd.image.repository }}:{{ .Values.etcd.image.tag }}"
  imagePullPolicy: {{ .Values.etcd.image.pullPolicy }}
  restartPolicy: Always
  command:
    - etcd
    - grpc-proxy
    - start
    - --endpoints={{ include "strata.etcdServerEndpoints" . }}
    - --listen-addr=127.0.0.1:{{ int .Values.etcd.tls.proxyPort }}
    - --advertise-client-url=127.0.0.1:{{ int .Values.etcd.tls.proxyPort }}
    - --cert=/etc/strata/etcd-client/tls.crt
    - --key=/etc/strata/etcd-client/tls.key
    - --cacert=/etc/strata/etcd-client/ca.crt
    - --data-dir=/tmp/etcd-proxy
  volumeMounts:
    - name: etcd-client-tls
      mountPath: /etc/strata/etcd-client
      readOnly: true
    - name: etcd-proxy-tmp
      mountPath: /tmp
  resources:
    {{- toYaml .Values.etcd.proxy.resources | nindent 4 }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities: {drop: [ALL]}
{{- end -}}

{{- define "strata.etcdProxyVolumes" -}}
- name: etcd-client-tls
  secret:
    secretName: {{ required "etcd.tls.enabled: set etcd.tls.clientSecretName" .Values.etcd.tls.clientSecretName }}
- name: etcd-proxy-tmp
  emptyDir: {}
{{- end -}}

{{/* Pod anti-affinity for one component: (dict "root" $ "component" "store" "mode" "hard"). */}}
{{- define "strata.antiAffinity" -}}
podAntiAffinity:
{{- if eq .mode "hard" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "strata.selectorLabels" . | nindent 10 }}
{{- else if eq .mode "soft" }}
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "strata.selectorLabels" . | nindent 12 }}
{{- else }}
{{- fail (printf "antiAffinity %q: want hard or soft" .mode) }}
{{- end }}
{{- end -}}
