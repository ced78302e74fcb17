//go:build race

package testenv

// raceEnabled: the test binary runs with the race detector, so BuildBinary
// builds helper binaries with -race too.
const raceEnabled = true
