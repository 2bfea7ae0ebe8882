package main

import (
	"flag"
	"fmt"
	"io"

	"sigs.k8s.io/yaml"

	"github.com/paperclip-k8s/paperclip-k8s/plugin"
)

// printRBAC prints, as one multi-document YAML, everything an operator
// applies for the provider's identity: `paperclip-k8s rbac
// [--service-account <namespace>/<name>] | kubectl apply -f -`.
func printRBAC(w io.Writer, args []string) error {
	fs := flag.NewFlagSet("rbac", flag.ContinueOnError)
	sa := fs.String("service-account", plugin.DefaultServiceAccount, "the provider's ServiceAccount, `namespace/name`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("rbac: unexpected argument %q (usage: paperclip-k8s rbac [--service-account <namespace>/<name>])", fs.Arg(0))
	}
	ns, name, err := plugin.ParseServiceAccount(*sa)
	if err != nil {
		return err
	}
	p, err := plugin.New(nil)
	if err != nil {
		return err
	}
	docs, err := p.RBAC(ns, name)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "# paperclip-k8s %s: the provider identity %s (apply all of it: without the\n# ValidatingAdmissionPolicy the identity is not confined to tenant namespaces).\n",
		plugin.Version, plugin.ServiceAccountUsername(ns, name))
	for _, d := range docs {
		b, err := yaml.Marshal(d)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(w, "---\n%s", b); err != nil {
			return err
		}
	}
	return nil
}
