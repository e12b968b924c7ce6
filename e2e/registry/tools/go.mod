// Pins the OCI registry (distribution, the CNCF "registry:3") that
// e2e/registry/build.sh builds for the image-aware tests. Only the version is
// taken from here: the binary is built inside the module's own directory, with
// its own go.mod and go.sum, so it gets exactly the dependency set upstream
// released with. go.sum holds the module's checksums so the download is
// verified. Never imported.
//
// To move to v3.X.Y: GOWORK=off go get github.com/distribution/distribution/v3@v3.X.Y
// here, then keep only the two distribution lines in go.sum.
module secure-defaults/e2e/registry/tools

go 1.26.0

require github.com/distribution/distribution/v3 v3.1.2
