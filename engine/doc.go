// Package engine creates, waits for, inspects and removes Kubernetes objects
// described by data files (see package resources; package engine/resource
// reads them and computes what needs no cluster). It works on unstructured
// objects through the dynamic client and knows no kind: what an object looks
// like, when it is ready, how its pods are found and how it is released all
// come from the file.
package engine
