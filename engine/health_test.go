package engine_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/matryer/is"

	"github.com/paperclip-k8s/paperclip-k8s/engine"
)

// TestReadinessRules evaluates the rules of the sandbox, job and pod files
// against objects recorded from real controllers (testdata/objects) for
// every state: ready, pending, terminal failures and successes, stale
// observedGeneration and deletion.
func TestReadinessRules(t *testing.T) {
	c := catalog(t)
	dir := filepath.Join("..", "testdata", "objects")
	raw, err := os.ReadFile(filepath.Join(dir, "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var expected map[string]struct{ State, Reason, Message string }
	if err := json.Unmarshal(raw, &expected); err != nil {
		t.Fatal(err)
	}
	if len(expected) < 20 {
		t.Fatalf("only %d recorded objects", len(expected))
	}
	for file, want := range expected {
		t.Run(file, func(t *testing.T) {
			is := is.New(t)
			obj, err := os.ReadFile(filepath.Join(dir, file))
			is.NoErr(err)
			specName := strings.SplitN(file, "-", 2)[0]
			s, ok := c.Get(specName)
			is.True(ok)
			var got engine.Status = s.Evaluate(obj)
			is.Equal(string(got.State), want.State)
			is.Equal(got.Reason, want.Reason)
			if !strings.Contains(got.Message, want.Message) {
				t.Errorf("message %q does not contain %q", got.Message, want.Message)
			}
		})
	}
}

func TestReadinessMessagesComeFromTheCondition(t *testing.T) {
	is := is.New(t)
	c := catalog(t)
	s, _ := c.Get("job")
	obj, err := os.ReadFile(filepath.Join("..", "testdata", "objects", "job-failed-deadline.json"))
	is.NoErr(err)
	st := s.Evaluate(obj)
	is.Equal(st.Message, "Job was active longer than specified deadline")
	is.True(st.State.Terminal())
	is.Equal(st.String(), "Failed/DeadlineExceeded: Job was active longer than specified deadline")
}
