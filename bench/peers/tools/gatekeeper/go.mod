// Pins the Gatekeeper release that bench/peers/build.sh builds (its controller
// manager, run with --operation=mutation-webhook) for the side-by-side
// benchmarks. Only the version is taken from here: the binary is built inside
// the module's own directory, with its own go.mod and go.sum, so it gets
// exactly the dependency set upstream released with. go.sum holds the
// module's checksums so the download is verified. Never imported.
//
// To move to v3.X.Y: GOWORK=off go get github.com/open-policy-agent/gatekeeper/v3@v3.X.Y
// here, then keep only the two gatekeeper lines in go.sum.
module secure-defaults/bench/peers/tools/gatekeeper

go 1.26.0

require github.com/open-policy-agent/gatekeeper/v3 v3.23.1
