package sandboxctl

import "sync"

// HoldPoint is a step of the vanished-pod sequence at which a Hold stops
// the controller for one Sandbox.
//
// When a live Sandbox's pod disappears, the real controller (observed, see
// doc.go) first clears the agents.x-k8s.io/pod-name annotation while the
// status still says what it said about the old pod (Ready=True), then
// creates a replacement pod with the same name, sets the annotation again,
// and only then writes a status about the new pod (Ready=False while it is
// Pending). Those windows last milliseconds there; a Hold stretches one of
// them until the test releases it, so a test can act inside it and wait
// for events instead of racing the controller.
type HoldPoint int

const (
	// PodGone: the pod is gone and the annotation has been cleared; no
	// replacement pod exists yet; the status is untouched (still Ready=True
	// if it was).
	PodGone HoldPoint = iota + 1
	// NewPod: the replacement pod has been created and the annotation set
	// again; the status is still untouched (it describes the old pod). The
	// new pod goes through its own states meanwhile (kwok makes it Running
	// unless a test annotation keeps it Pending).
	NewPod
)

func (p HoldPoint) String() string {
	switch p {
	case PodGone:
		return "PodGone"
	case NewPod:
		return "NewPod"
	}
	return "HoldPoint(?)"
}

// Hold stops the controller at one HoldPoint of one Sandbox's vanished-pod
// sequence, once. Create it with Controller.Hold before deleting the pod.
type Hold struct {
	c       *Controller
	key     string
	at      HoldPoint
	reached chan struct{}
	once    sync.Once
}

// Hold arms a hold: the next time the Sandbox namespace/name reaches the
// point at, the controller stops there: it makes no writes for that
// Sandbox (its other Sandboxes go on) until Release. Reached is closed
// when it gets there. Holds of different points may be armed together.
func (c *Controller) Hold(namespace, name string, at HoldPoint) *Hold {
	h := &Hold{c: c, key: namespace + "/" + name, at: at, reached: make(chan struct{})}
	c.holdMu.Lock()
	defer c.holdMu.Unlock()
	if c.armed == nil {
		c.armed = map[string][]*Hold{}
		c.active = map[string]*Hold{}
	}
	c.armed[h.key] = append(c.armed[h.key], h)
	return h
}

// Reached is closed once the controller has stopped at the hold's point.
func (h *Hold) Reached() <-chan struct{} { return h.reached }

// Release lets the controller go on (it reconciles the Sandbox again at
// once), or disarms a hold not reached yet. It is safe to call more than
// once, e.g. from t.Cleanup as well.
func (h *Hold) Release() {
	h.once.Do(func() {
		c := h.c
		c.holdMu.Lock()
		armed := c.armed[h.key]
		for i, a := range armed {
			if a == h {
				c.armed[h.key] = append(armed[:i:i], armed[i+1:]...)
				break
			}
		}
		wasActive := c.active[h.key] == h
		if wasActive {
			delete(c.active, h.key)
		}
		c.holdMu.Unlock()
		if wasActive {
			c.log.Info("hold released", "sandbox", h.key, "at", h.at.String())
			if q := c.queue; q != nil {
				q.Add(h.key)
			}
		}
	})
}

// reach stops at point at when a hold for key is armed there: it reports
// whether the caller must stop.
func (c *Controller) reach(key string, at HoldPoint) bool {
	c.holdMu.Lock()
	var h *Hold
	armed := c.armed[key]
	for i, a := range armed {
		if a.at == at {
			h = a
			c.armed[key] = append(armed[:i:i], armed[i+1:]...)
			break
		}
	}
	if h != nil {
		c.active[key] = h
	}
	c.holdMu.Unlock()
	if h == nil {
		return false
	}
	c.log.Info("holding", "sandbox", key, "at", at.String())
	close(h.reached)
	return true
}

// held reports whether the controller is stopped at a hold for key.
func (c *Controller) held(key string) bool {
	c.holdMu.Lock()
	defer c.holdMu.Unlock()
	return c.active[key] != nil
}
