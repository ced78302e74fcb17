// Package podman is the rootless Podman deployment of the underpass binary
// (SPEC R-O5): a FROM scratch Containerfile, a quadlet for Podman >= 4.4, the
// unit `podman generate systemd --new` makes, an auto-update timer, and the
// README walkthrough. It holds no Go code; its tests check the unit files and
// run the image end to end as an unprivileged user.
package podman
