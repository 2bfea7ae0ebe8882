# The README's commands; `just` is optional (npm rust-just provides it).

# acquire → exec → release on the embedded dev control plane
demo *args:
    go run ./cmd/paperclip-k8s demo {{args}}

# benchmark the provider on the embedded dev control plane: figures, no asserts (bench -h for flags)
bench *args:
    go run ./cmd/paperclip-k8s bench {{args}}

# every test: units, real control plane, real paperclip-server
test *args:
    bash hack/test.sh {{args}}

# unit tests only (no control plane)
unit:
    go test ./engine/ ./plugin/policy/ ./plugin/rpc/

# build the control-plane binaries into the cache (cold: ~7.5 min)
bins:
    bash hack/build-k8s-bins.sh

# build the binary
build:
    go build -o bin/paperclip-k8s ./cmd/paperclip-k8s

# print the ClusterRole the provider needs
rbac:
    go run ./cmd/paperclip-k8s rbac

# build the Paperclip plugin package directory
npm:
    bash hack/build-npm.sh
