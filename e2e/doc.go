// Package e2e holds banger's end-to-end tests: they build banger and bangerd,
// build the default guest image once, then drive real QEMU guests through the
// CLI binary inside a private network namespace. They run as root only
// (make test); otherwise, without qemu-system-x86_64, or when the image
// cannot be built, they skip and say why.
package e2e
