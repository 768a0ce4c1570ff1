package inject

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	jsonpatchv5 "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// FuzzWebhook posts arbitrary bodies to the webhook. It always answers
// with an AdmissionReview; a review it allows with a patch carries one
// that applies to the object and yields a Pod that would not be injected
// again. Seeds are in testdata/fuzz.
func FuzzWebhook(f *testing.F) {
	raw, _ := json.Marshal(testPod(nil))
	body, _ := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "1", Operation: admissionv1.Create, Namespace: "demo",
			Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Object: runtime.RawExtension{Raw: raw}},
	})
	f.Add(body)
	h := Handler(Config{Image: "ballast"})
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/inject", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		h.ServeHTTP(rec, req)
		var review admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &review); err != nil || review.Response == nil {
			t.Fatalf("status %d, body %q: not an AdmissionReview response (%v)", rec.Code, rec.Body, err)
		}
		resp := review.Response
		if !resp.Allowed || len(resp.Patch) == 0 {
			return
		}
		var in admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &in); err != nil || in.Request == nil {
			t.Fatalf("a patch for a body that is no review: %s", body)
		}
		patch, err := jsonpatchv5.DecodePatch(resp.Patch)
		if err != nil {
			t.Fatalf("patch %s: %v", resp.Patch, err)
		}
		out, err := patch.Apply(in.Request.Object.Raw)
		if err != nil {
			t.Fatalf("patch %s does not apply to %s: %v", resp.Patch, in.Request.Object.Raw, err)
		}
		var pod corev1.Pod
		if err := json.Unmarshal(out, &pod); err != nil {
			t.Fatalf("patched object is no Pod: %v", err)
		}
		if again, _ := Decide(&pod); again {
			t.Fatalf("the patched pod would be injected again: %s", out)
		}
	})
}
