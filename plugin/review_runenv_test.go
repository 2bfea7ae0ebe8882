package plugin

import (
	"context"
	"strings"
	"testing"

	"github.com/matryer/is"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
)

// A run Secret whose data is not base64 (changed after acquire) is refused
// with the field and the fix, and without the value.
func TestRunEnvNotBase64SaysTheFix(t *testing.T) {
	is := is.New(t)
	f := fakeProvider(t)
	ctx := context.Background()
	_, m := acquireWarm(t, f)
	claims, _ := f.p.Catalog.Get("sandboxclaim")
	ref := engine.Ref{Resource: claims, Namespace: m.Namespace, Name: m.WorkloadName}
	w, err := f.e.Get(ctx, ref)
	is.NoErr(err)
	sc := f.dyn.Resource(gvrSecret).Namespace(m.Namespace)
	sec, err := sc.Get(ctx, m.SecretName, metav1.GetOptions{})
	is.NoErr(err)
	is.NoErr(unstructured.SetNestedMap(sec.Object, map[string]any{"API_KEY": "sk-secret-value!"}, "data"))
	_, err = sc.Update(ctx, sec, metav1.UpdateOptions{})
	is.NoErr(err)
	_, err = f.p.runEnv(ctx, f.cl, ref, w, m)
	is.True(err != nil)
	is.True(strings.Contains(err.Error(), "data.API_KEY is not base64"))
	is.True(strings.Contains(err.Error(), "acquire a new one"))
	is.True(!strings.Contains(err.Error(), "sk-secret-value"))
}
