package policy

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"
)

// MaxNamespaceLength is the limit of a namespace name (a DNS label).
const MaxNamespaceLength = 63

// maxSlugLength is the reference's MAX_SLUG_LENGTH.
const maxSlugLength = 53

var (
	slugInvalidRE = regexp.MustCompile(`[^a-z0-9-]+`)
	dnsLabelRE    = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	labelValueRE  = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)
	labelInvalid  = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)
)

// CompanySlug derives a namespace slug from a company id with the
// reference's rules: lowercase, runs of characters other than [a-z0-9-]
// become '-', leading and trailing '-' are trimmed, "" becomes "company";
// a slug longer than 53 characters becomes its first 44 characters (trailing
// '-' trimmed) + '-' + the first 8 hex digits of sha256(companyID). A UUID
// (36 characters) is kept whole.
func CompanySlug(companyID string) string { return slugWithMax(companyID, maxSlugLength) }

func slugWithMax(input string, max int) string {
	s := slugInvalidRE.ReplaceAllString(strings.ToLower(input), "-")
	s = strings.Trim(s, "-")
	if s == "" {
		s = "company"
	}
	if len(s) <= max {
		return s
	}
	sum := sha256.Sum256([]byte(input))
	head := strings.TrimRight(s[:max-9], "-")
	return head + "-" + hex.EncodeToString(sum[:])[:8]
}

// ReservedPrefixes start the names of namespaces that belong to the cluster
// or its distribution; a tenant namespace never has one.
var ReservedPrefixes = []string{"kube-", "openshift-"}

// ReservedNames are namespaces that are never a tenant namespace.
var ReservedNames = []string{"default", "openshift"}

// Reserved returns why ns can never be a tenant namespace ("" when it can):
// a name the cluster owns (default, openshift) or one with a prefix the
// cluster reserves (kube-, openshift-).
func Reserved(ns string) string {
	for _, n := range ReservedNames {
		if ns == n {
			return fmt.Sprintf("%q is a namespace the cluster owns", ns)
		}
	}
	for _, p := range ReservedPrefixes {
		if strings.HasPrefix(ns, p) {
			return fmt.Sprintf("%q starts with %q, a prefix reserved for the cluster's own namespaces", ns, p)
		}
	}
	return ""
}

// NamespaceName returns prefix+slug, or an error when that is longer than 63
// characters, not a DNS label (the reference did not check), or reserved
// (see Reserved).
func NamespaceName(prefix, slug string) (string, error) {
	ns := prefix + slug
	if why := Reserved(ns); why != "" {
		return "", fmt.Errorf("namespace %q (namespacePrefix %q + company slug %q) cannot be a tenant namespace: %s; choose another namespacePrefix or companySlug",
			ns, prefix, slug, why)
	}
	if len(ns) > MaxNamespaceLength {
		return "", fmt.Errorf("namespace %q (namespacePrefix %q + company slug %q) is %d characters; the limit is %d: shorten namespacePrefix or companySlug",
			ns, prefix, slug, len(ns), MaxNamespaceLength)
	}
	if !dnsLabelRE.MatchString(ns) {
		return "", fmt.Errorf("namespace %q (namespacePrefix %q + company slug %q) is not a DNS label: use lowercase letters, digits and '-', starting and ending with a letter or digit",
			ns, prefix, slug)
	}
	return ns, nil
}

// Namespace returns the tenant namespace of a company: namespacePrefix +
// companySlug when the config sets a slug, else + the slug derived from
// companyID. A derived slug is shortened (with the hash suffix of
// CompanySlug) so that the namespace fits in 63 characters; it equals
// CompanySlug(companyID) whenever that already fits.
func (c Config) Namespace(companyID string) (string, error) {
	if c.CompanySlug != "" {
		return NamespaceName(c.NamespacePrefix, c.CompanySlug)
	}
	max := min(maxSlugLength, MaxNamespaceLength-len(c.NamespacePrefix))
	if max < 10 {
		return "", fmt.Errorf("namespacePrefix %q leaves %d characters for the company slug; shorten it", c.NamespacePrefix, max)
	}
	return NamespaceName(c.NamespacePrefix, slugWithMax(companyID, max))
}

// RunNamePrefix starts every workload name.
const RunNamePrefix = "pc-"

const crockford = "0123456789abcdefghjkmnpqrstvwxyz"

var runNameRE = regexp.MustCompile(`^` + RunNamePrefix + `[0-9a-hjkmnp-tv-z]{26}$`)

// IsRunName reports whether s has the form of NewRunName's names.
func IsRunName(s string) bool { return runNameRE.MatchString(s) }

// NewRunName returns a workload name: "pc-" + a 26-character lowercase
// Crockford-base32 ULID (10 characters of millisecond time, most significant
// first, then 16 random characters from crypto/rand). It is a valid DNS
// label and sorts by creation time.
func NewRunName() string { return RunNamePrefix + newULID(time.Now(), rand.Reader) }

func newULID(now time.Time, r io.Reader) string {
	var b [26]byte
	ms := uint64(now.UnixMilli())
	for i := 9; i >= 0; i-- {
		b[i] = crockford[ms&31]
		ms >>= 5
	}
	var rnd [16]byte
	if _, err := io.ReadFull(r, rnd[:]); err != nil {
		panic("policy: reading random bytes: " + err.Error())
	}
	for i, v := range rnd {
		b[10+i] = crockford[v&31]
	}
	return string(b[:])
}

// Label keys and values used on every object the provider creates.
const (
	// LabelRunID is on every workload a run acquired; a workload without
	// it is a standby no run has taken yet (made ahead of its run).
	LabelRunID     = "paperclip.io/run-id"
	LabelAgentID   = "paperclip.io/agent-id"
	LabelCompanyID = "paperclip.io/company-id"
	// LabelEnvironmentID is on every workload: a lease is used only with
	// the config of the environment that acquired it.
	LabelEnvironmentID = "paperclip.io/environment-id"
	LabelAdapter       = "paperclip.io/adapter"
	LabelManagedBy     = "paperclip.io/managed-by"
	LabelRole          = "paperclip.io/role"

	// AnnotationPodUID on a workload is the UID of the pod its lease was
	// pinned to by its first command.
	AnnotationPodUID = "paperclip.io/pod-uid"

	ManagedByValue = "paperclip-k8s-plugin"
	RoleAgent      = "agent"
)

// RunIdentity identifies a run for labelling.
type RunIdentity struct {
	RunID         string
	AgentID       string // the Paperclip agent id; "" when the host sent none
	CompanyID     string
	EnvironmentID string
	AdapterType   string
}

// Labels returns the paperclip.io/* labels of a run's objects: run-id,
// agent-id (the real agent id; omitted when unknown — the reference put the
// run id there), company-id, environment-id, adapter, and managed-by. Values go through
// LabelValue; labels with empty values are omitted.
func Labels(run RunIdentity) map[string]string {
	l := map[string]string{LabelManagedBy: ManagedByValue}
	for k, v := range map[string]string{
		LabelRunID:         run.RunID,
		LabelAgentID:       run.AgentID,
		LabelCompanyID:     run.CompanyID,
		LabelEnvironmentID: run.EnvironmentID,
		LabelAdapter:       run.AdapterType,
	} {
		if v := LabelValue(v); v != "" {
			l[k] = v
		}
	}
	return l
}

// PodLabels returns Labels plus paperclip.io/role=agent, the selector of the
// tenant egress policies.
func PodLabels(run RunIdentity) map[string]string {
	l := Labels(run)
	l[LabelRole] = RoleAgent
	return l
}

// LabelValue returns s when it is a valid label value (at most 63
// characters of [A-Za-z0-9._-], beginning and ending with a letter or digit).
// Otherwise it replaces invalid characters with '-', trims the ends, cuts it
// to 54 characters and appends '-' + 8 hex digits of sha256(s), so distinct
// inputs stay distinct. Selectors must use the same function.
func LabelValue(s string) string {
	if len(s) <= 63 && labelValueRE.MatchString(s) {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	suffix := hex.EncodeToString(sum[:])[:8]
	v := labelInvalid.ReplaceAllString(s, "-")
	v = strings.TrimFunc(v, func(r rune) bool { return !isAlnum(r) })
	if len(v) > 54 {
		v = strings.TrimRightFunc(v[:54], func(r rune) bool { return !isAlnum(r) })
	}
	if v == "" {
		return suffix
	}
	return v + "-" + suffix
}

func isAlnum(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}
