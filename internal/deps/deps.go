package deps

import (
	_ "github.com/matryer/is"
	_ "github.com/santhosh-tekuri/jsonschema/v5"
	_ "github.com/tidwall/gjson"
	_ "k8s.io/api/core/v1"
	_ "k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	_ "k8s.io/client-go/discovery/cached/memory"
	_ "k8s.io/client-go/dynamic"
	_ "k8s.io/client-go/dynamic/fake"
	_ "k8s.io/client-go/kubernetes"
	_ "k8s.io/client-go/restmapper"
	_ "k8s.io/client-go/tools/clientcmd"
	_ "k8s.io/client-go/tools/remotecommand"
	_ "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	_ "sigs.k8s.io/yaml"
)
