// Package testenv is the end-to-end test infrastructure of Underpass: it builds
// throwaway Linux network namespaces wired like a real deployment (client ⇄
// gateway ⇄ corporate network), runs the gateway and the stock openconnect
// client inside them, and fetches pages through the tunnel with curl.
//
// Why namespaces: the gateway must be proven against the real openconnect
// binary, with real sockets, real routing and real isolation (the client can
// reach the corporate network only through the tunnel), without touching the
// host's network. Every namespace is uniquely named ("up-" prefix), so tests
// and packages can run in parallel, and everything a test creates (namespaces,
// processes, servers) is removed in t.Cleanup. scripts/netns-clean.sh removes
// what a crashed run left behind.
//
// Only RFC 2544 benchmark addresses (198.18.0.0/15) and loopback are used.
//
// A typical end-to-end test:
//
//	tp := testenv.Topology(t)                       // client ⇄ gw ⇄ corp
//	base := tp.ServeHTTP(t, 8080)                   // http://198.19.0.2:8080
//	cert := testenv.NewCert(t, testenv.GWAddr.String())
//	bin := testenv.BuildBinary(t, "./examples/standalone")
//	gw := tp.GW.Start(t, bin, "serve", "-config", cfgFile) // listen 198.18.0.2:443
//	_ = tp.GW.WaitTCP(ctx, "198.18.0.2:443", gw)
//	s := testenv.Openconnect(t, tp.Client, testenv.OCOptions{Server: "198.18.0.2:443",
//		ServerCertPin: cert.Pin, User: "alice", Password: "pw", Mode: testenv.ModeOcproxy})
//	body, err := testenv.CurlViaSocks(ctx, tp.Client, s.SocksPort, base+"/")
//
// Most helpers need root and some tools (ip, iptables, openconnect, ocproxy,
// curl). RequireRoot and RequireTool fail the test with an install hint, or
// skip it under -short outside CI; scripts/deps.sh installs the tools.
package testenv
