package tunnel

// DTLSPortForTest returns the port the gateway announces for DTLS (0:
// none served yet).
func DTLSPortForTest(g *Gateway) int { return int(g.dtlsPort.Load()) }
