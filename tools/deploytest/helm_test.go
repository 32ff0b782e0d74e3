package deploytest

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

const chartDir = "deploy/helm/rotavault"

// rendered is a chart's manifests, decoded strictly into Kubernetes types.
type rendered struct {
	deployment     *appsv1.Deployment
	service        *corev1.Service
	serviceAccount *corev1.ServiceAccount
	disruption     *policyv1.PodDisruptionBudget
	networkPolicy  *networkingv1.NetworkPolicy
	kinds          []string
}

// renderChart renders the chart with Helm's engine as `helm template` would
// for release "rv" in namespace "payments", with values merged over the
// chart's. Every manifest must decode strictly (no unknown or duplicate
// field) into the type of its kind.
func renderChart(t *testing.T, values map[string]any) (rendered, error) {
	t.Helper()
	chart, err := loader.Load(filepath.Join(repoRoot, chartDir))
	if err != nil {
		t.Fatal(err)
	}
	if err := chart.Validate(); err != nil {
		t.Fatal(err)
	}
	vals, err := chartutil.ToRenderValues(chart, values, chartutil.ReleaseOptions{Name: "rv", Namespace: "payments", IsInstall: true, Revision: 1}, chartutil.DefaultCapabilities)
	if err != nil {
		t.Fatal(err)
	}
	files, err := engine.Render(chart, vals)
	if err != nil {
		return rendered{}, err
	}
	var r rendered
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !strings.HasSuffix(name, ".yaml") {
			continue
		}
		for _, doc := range bytes.Split([]byte(files[name]), []byte("\n---")) {
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			var meta metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &meta); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			var obj any
			switch meta.APIVersion + " " + meta.Kind {
			case "apps/v1 Deployment":
				r.deployment = &appsv1.Deployment{}
				obj = r.deployment
			case "v1 Service":
				r.service = &corev1.Service{}
				obj = r.service
			case "v1 ServiceAccount":
				r.serviceAccount = &corev1.ServiceAccount{}
				obj = r.serviceAccount
			case "policy/v1 PodDisruptionBudget":
				r.disruption = &policyv1.PodDisruptionBudget{}
				obj = r.disruption
			case "networking.k8s.io/v1 NetworkPolicy":
				r.networkPolicy = &networkingv1.NetworkPolicy{}
				obj = r.networkPolicy
			default:
				t.Fatalf("%s: unexpected %s %s: decode it here", name, meta.APIVersion, meta.Kind)
			}
			decodeStrict(t, name, doc, obj)
			r.kinds = append(r.kinds, meta.Kind)
		}
	}
	return r, nil
}

// TestHelmChart renders the chart with its defaults (Vault store, two
// replicas) and asserts what makes it safe to run: probes on /healthz and
// /readyz, Vault's Kubernetes auth, a read-only root file system as a
// numeric non-root user without capabilities, a disruption budget, a network
// policy, and every serve flag it passes exists.
func TestHelmChart(t *testing.T) {
	r, err := renderChart(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "NetworkPolicy"} {
		if !slices.Contains(r.kinds, kind) {
			t.Errorf("no %s rendered (got %v)", kind, r.kinds)
		}
	}
	if r.deployment == nil {
		t.FailNow()
	}
	d := r.deployment
	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	httpPort := containerPort(t, c, "http")

	t.Run("probes", func(t *testing.T) {
		for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe} {
			want := "/healthz"
			if name == "readiness" {
				want = "/readyz"
			}
			if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != want || p.HTTPGet.Port != intstr.FromString("http") {
				t.Errorf("%s probe %+v, want GET %s on the http port", name, p, want)
			}
		}
		if !containsArg(c.Args, "--http-listen", fmt.Sprintf("0.0.0.0:%d", httpPort)) {
			t.Errorf("the probes' port %d is not where serve listens: %v", httpPort, c.Args)
		}
	})

	t.Run("security context", func(t *testing.T) {
		psc, sc := pod.SecurityContext, c.SecurityContext
		if psc == nil || sc == nil {
			t.Fatal("no security context")
		}
		if !isTrue(psc.RunAsNonRoot) || !isTrue(sc.RunAsNonRoot) {
			t.Error("runAsNonRoot is not set")
		}
		if sc.RunAsUser == nil || *sc.RunAsUser == 0 || psc.RunAsUser == nil || *psc.RunAsUser != *sc.RunAsUser {
			t.Errorf("runAsUser %v / %v: want one numeric non-root user", psc.RunAsUser, sc.RunAsUser)
		}
		if !isTrue(sc.ReadOnlyRootFilesystem) {
			t.Error("the root file system is writable")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || isTrue(sc.Privileged) {
			t.Error("privilege escalation is allowed")
		}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
			t.Errorf("capabilities %+v: want ALL dropped, none added", sc.Capabilities)
		}
		if psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("seccomp profile %+v", psc.SeccompProfile)
		}
		// The only writable place is the data directory, on a volume.
		var writable []string
		for _, m := range c.VolumeMounts {
			if !m.ReadOnly {
				writable = append(writable, m.MountPath)
			}
		}
		if !slices.Equal(writable, []string{"/var/lib/rotavault"}) || !containsArg(c.Args, "--data-dir", "/var/lib/rotavault") {
			t.Errorf("writable mounts %v, args %v: want the data directory only", writable, c.Args)
		}
	})

	t.Run("vault kubernetes auth", func(t *testing.T) {
		for _, want := range [][2]string{
			{"--store", "vault"}, {"--vault-auth", "kubernetes"}, {"--vault-kubernetes-role", "rotavault"},
			{"--vault-auth-mount", "kubernetes"}, {"--vault-mount", "secret"}, {"--vault-prefix", "rotavault"},
		} {
			if !containsArg(c.Args, want[0], want[1]) {
				t.Errorf("args %v lack %s=%s", c.Args, want[0], want[1])
			}
		}
		if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "VAULT_ADDR" && e.Value != "" }) {
			t.Error("no VAULT_ADDR")
		}
		if !isTrue(pod.AutomountServiceAccountToken) || pod.ServiceAccountName != r.serviceAccount.Name {
			t.Errorf("the pod does not carry its service account's token (automount %v, %q vs %q)", pod.AutomountServiceAccountToken, pod.ServiceAccountName, r.serviceAccount.Name)
		}
		if r.serviceAccount.AutomountServiceAccountToken == nil || *r.serviceAccount.AutomountServiceAccountToken {
			t.Error("the service account's token is mounted into every pod that uses it")
		}
	})

	t.Run("every flag exists", func(t *testing.T) {
		checkServeFlags(t, buildRotavault(t, t.TempDir()), c.Args)
	})

	t.Run("disruption budget", func(t *testing.T) {
		pdb := r.disruption
		if pdb == nil || pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() < 1 || pdb.Spec.MinAvailable.IntValue() >= int(*d.Spec.Replicas) {
			t.Fatalf("PodDisruptionBudget %+v for %d replicas", pdb, *d.Spec.Replicas)
		}
		if !selects(pdb.Spec.Selector, d.Spec.Template.Labels) {
			t.Error("the PodDisruptionBudget does not select the pods")
		}
	})

	t.Run("network policy", func(t *testing.T) {
		np := r.networkPolicy
		if np == nil || !selects(&np.Spec.PodSelector, d.Spec.Template.Labels) {
			t.Fatal("no NetworkPolicy selecting the pods")
		}
		if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}) {
			t.Errorf("policy types %v: want ingress and egress restricted", np.Spec.PolicyTypes)
		}
		var ingressPorts []string
		for _, rule := range np.Spec.Ingress {
			if len(rule.From) == 0 {
				t.Errorf("an ingress rule admits everyone: %+v", rule)
			}
			for _, p := range rule.Ports {
				ingressPorts = append(ingressPorts, p.Port.String())
			}
		}
		if sort.Strings(ingressPorts); !slices.Equal(ingressPorts, []string{"grpc", "http"}) {
			t.Errorf("ingress ports %v: want grpc and http only", ingressPorts)
		}
		for _, rule := range np.Spec.Egress {
			if len(rule.Ports) == 0 {
				t.Errorf("an egress rule allows every port: %+v", rule)
			}
		}
	})

	t.Run("service", func(t *testing.T) {
		s := r.service
		if s == nil || !selects(&metav1.LabelSelector{MatchLabels: s.Spec.Selector}, d.Spec.Template.Labels) {
			t.Fatal("no Service selecting the pods")
		}
		for _, p := range s.Spec.Ports {
			if containerPort(t, c, p.TargetPort.String()) == 0 {
				t.Errorf("service port %s targets no container port", p.Name)
			}
		}
	})
}

// TestHelmChartVariants renders the other shapes the values allow.
func TestHelmChartVariants(t *testing.T) {
	t.Run("transit", func(t *testing.T) {
		r, err := renderChart(t, map[string]any{"vault": map[string]any{"transitKey": "rotavault", "caSecret": "vault-ca"}})
		if err != nil {
			t.Fatal(err)
		}
		c := r.deployment.Spec.Template.Spec.Containers[0]
		if !containsArg(c.Args, "--vault-transit-key", "rotavault") || !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "VAULT_CACERT" }) {
			t.Errorf("args %v env %v: want the Transit key and VAULT_CACERT", c.Args, c.Env)
		}
	})
	t.Run("vault cluster", func(t *testing.T) {
		nodes := []any{"https://vault-0.vault-internal:8200", "https://vault-1.vault-internal:8200", "https://vault-2.vault-internal:8200"}
		r, err := renderChart(t, map[string]any{"vault": map[string]any{"addresses": nodes}})
		if err != nil {
			t.Fatal(err)
		}
		c := r.deployment.Spec.Template.Spec.Containers[0]
		for _, n := range nodes {
			if !containsArg(c.Args, "--vault-addr", n.(string)) {
				t.Errorf("args %v: want --vault-addr %s", c.Args, n)
			}
		}
		// serve's --vault-addr itself runs in integration/cluster_test.go.
	})
	t.Run("embedded store with several replicas is refused", func(t *testing.T) {
		if _, err := renderChart(t, map[string]any{"store": "embedded"}); err == nil || !strings.Contains(err.Error(), "replicaCount: 1") {
			t.Fatalf("render = %v, want the embedded store refused for two replicas", err)
		}
	})
	t.Run("embedded store", func(t *testing.T) {
		r, err := renderChart(t, map[string]any{"store": "embedded", "replicaCount": 1, "persistence": map[string]any{"enabled": true, "existingClaim": "rotavault-data"}})
		if err != nil {
			t.Fatal(err)
		}
		pod := r.deployment.Spec.Template.Spec
		if r.disruption != nil || r.deployment.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType || isTrue(pod.AutomountServiceAccountToken) {
			t.Errorf("one replica: no disruption budget (it would block drains), Recreate, no service-account token; got %v %v %v", r.disruption != nil, r.deployment.Spec.Strategy.Type, pod.AutomountServiceAccountToken)
		}
		if !containsArg(pod.Containers[0].Args, "--store-key-file", "/etc/rotavault/store-key/store.key") {
			t.Errorf("args %v: no store key", pod.Containers[0].Args)
		}
	})
}

// decodeStrict decodes a YAML manifest into obj as the API server's strict
// field validation does: duplicate keys, unknown fields and fields in the
// wrong case (which encoding/json would accept) are errors.
func decodeStrict(t *testing.T, name string, doc []byte, obj any) {
	t.Helper()
	raw, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		t.Fatalf("%s: %v\n%s", name, err, doc)
	}
	strict, err := kjson.UnmarshalStrict(raw, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err := errors.Join(append(strict, err)...); err != nil {
		t.Fatalf("%s: strict decoding into %T: %v\n%s", name, obj, err, doc)
	}
}

func containerPort(t *testing.T, c corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Errorf("no container port %q", name)
	return 0
}

func isTrue(b *bool) bool { return b != nil && *b }

// selects reports whether sel's matchLabels select labels (the chart uses
// no expressions).
func selects(sel *metav1.LabelSelector, labels map[string]string) bool {
	if sel == nil || len(sel.MatchLabels) == 0 || len(sel.MatchExpressions) > 0 {
		return false
	}
	for k, v := range sel.MatchLabels {
		if labels[k] != v {
			return false
		}
	}
	return true
}
