// Pins the Kyverno release that bench/peers/build.sh builds (its admission
// controller, cmd/kyverno, and the kubectl-kyverno CLI) for the side-by-side
// benchmarks. Only the version is taken from here: the binaries are built
// inside the module's own directory, because Kyverno's go.mod has a `replace`
// (k8s.io/pod-security-admission) that `go build pkg@version` or a requiring
// module would ignore. go.sum holds the module's checksums so the download is
// verified. Never imported.
//
// To move to v1.X.Y: GOWORK=off go get github.com/kyverno/kyverno@v1.X.Y here,
// then keep only the two kyverno lines in go.sum.
module secure-defaults/bench/peers/tools/kyverno

go 1.26.6

require github.com/kyverno/kyverno v1.19.1
