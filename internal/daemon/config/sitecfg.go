package config

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"slices"

	"gopkg.in/yaml.v3"
)

// One server configuration for the site (issue 12 item 4). With
// site.store.server_config, a server's own file holds only the per-server
// keys (LocalKeys); the rest, the site configuration, is one YAML
// document in the site store that `underpass site push` writes. The
// server validates and runs the two together, as if they were one file.

// role is what a part of a configuration may hold.
type role int

const (
	whole   role = iota // a whole config file (or, with server_config, a server's own file)
	siteDoc             // the site configuration: every key but the per-server ones
)

// part is one YAML document of a configuration.
type part struct {
	name string // for messages: a file name, or where the store keeps it
	b    []byte
	role role
}

// LocalKeys are the top-level keys that belong to one server, never to the
// site configuration: where it listens and with which certificate, how it
// reaches the store and which server of the site it is, its logs, and its
// UDP ports. identity.session_key is per-server too (LocalIdentityKeys):
// the key that seals cookies never enters the store.
var LocalKeys = []string{"listen", "tls", "site", "log", "admin_http", "host_addrs", "disable_udp", "dtls_port"}

// LocalIdentityKeys are the identity keys a server's own file holds.
var LocalIdentityKeys = []string{"session_key"}

// checkRole reports the keys a part may not hold: per-server keys in the
// site configuration, and site keys in a server's own file when that
// file says the site configuration comes from the store.
func (p *parser) checkRole(pt part, root *yaml.Node, f *File) {
	m := topMapping(root)
	if m == nil {
		return
	}
	serverConfig := f.Site.Store != nil && f.Site.Store.ServerConfig
	if pt.role != siteDoc && !serverConfig {
		return
	}
	at := func(n *yaml.Node, msg string, args ...any) {
		p.e.Problems = append(p.e.Problems, fmt.Sprintf("%s:%d: ", pt.name, n.Line)+fmt.Sprintf(msg, args...))
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		local := slices.Contains(LocalKeys, k.Value)
		switch {
		case k.Value == "identity" && v.Kind == yaml.MappingNode:
			for j := 0; j+1 < len(v.Content); j += 2 {
				sk := v.Content[j]
				localID := slices.Contains(LocalIdentityKeys, sk.Value)
				switch {
				case pt.role == siteDoc && localID:
					at(sk, "identity.%s: the session key stays out of the store: set it in each server's own file", sk.Value)
				case pt.role != siteDoc && !localID:
					at(sk, "identity.%s: a site key: with site.store.server_config it comes from the site configuration (underpass site push); remove it here", sk.Value)
				}
			}
		case pt.role == siteDoc && local:
			at(k, "%s: a per-server key: set it in each server's own file, not in the site configuration", k.Value)
		case pt.role != siteDoc && !local:
			at(k, "%s: a site key: with site.store.server_config it comes from the site configuration (underpass site push); remove it here", k.Value)
		}
	}
}

// topMapping is a document's top-level mapping, or nil (an empty
// document, or not a mapping: decoding reports that).
func topMapping(root *yaml.Node) *yaml.Node {
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 || root.Content[0].Kind != yaml.MappingNode {
		return nil
	}
	return root.Content[0]
}

// mergeRoots joins documents whose keys are disjoint (checkRole) into one;
// the identity sections of both are joined key by key.
func mergeRoots(roots []*yaml.Node) *yaml.Node {
	out := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	var identity *yaml.Node
	for _, r := range roots {
		m := topMapping(r)
		if m == nil {
			continue
		}
		for i := 0; i+1 < len(m.Content); i += 2 {
			k, v := m.Content[i], m.Content[i+1]
			if k.Value == "identity" && v.Kind == yaml.MappingNode {
				if identity == nil {
					identity = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
					out.Content = append(out.Content, k, identity)
				}
				identity.Content = append(identity.Content, v.Content...)
				continue
			}
			out.Content = append(out.Content, k, v)
		}
	}
	return &yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{out}}
}

// placeholderSessionKey stands in for the session key every server
// brings in its own file, so a site configuration validated alone is
// judged as the servers will judge it (sso requires a session key). The
// Config parsed so is for validation only: it never seals a cookie.
func (f *File) placeholderSessionKey() {
	if f.Identity != nil && f.Identity.SessionKey == "" {
		f.Identity.SessionKey = base64.StdEncoding.EncodeToString(make([]byte, 32))
	}
}

// ParseSite validates a site configuration alone, with the same checks a
// server makes (file:line errors): `underpass site push` runs it before
// writing to the store. Per-server keys in it are errors. Relative paths
// resolve against name's directory here; on each server, against that
// server's own file's directory. The result is for validation only.
func ParseSite(name string, b []byte) (*Config, error) {
	return parse(name, []part{{name: name, b: b, role: siteDoc}})
}

// LoadWithSite reads the server's own file at path and validates it
// together with the site configuration site (siteName names it in
// messages, e.g. where the store keeps it). The file must set
// site.store.server_config and hold only per-server keys.
func LoadWithSite(path, siteName string, site []byte) (*Config, error) {
	b, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return parse(path, []part{{name: path, b: b, role: whole}, {name: siteName, b: site, role: siteDoc}})
}

// Schema is the version of the set of keys this binary reads. It goes up
// by one whenever a release adds a key; keySince records which. A server
// announces its Schema in its health record, and `underpass site push`
// refuses a site configuration that uses a key some live server is too
// old to read (it would reject the whole configuration).
const Schema = 2

// keySince gives the schema that introduced a key (a dotted path); keys
// not listed are from schema 1, the keys before site configurations.
var keySince = map[string]int{
	"drain_delay": 2,
}

// RequiredSchema is the lowest Schema that reads every key of the YAML
// document b, and the keys that need more than schema 1.
func RequiredSchema(b []byte) (int, []string, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return 0, nil, err
	}
	paths := map[string]bool{}
	keyPaths(&root, "", paths)
	need, newer := 1, []string(nil)
	for path := range paths {
		if s := keySince[path]; s > 1 {
			newer = append(newer, path)
			need = max(need, s)
		}
	}
	slices.Sort(newer)
	return need, newer, nil
}

// keyPaths collects the dotted paths of every mapping key under n
// (sequence items add no index: users.name).
func keyPaths(n *yaml.Node, prefix string, out map[string]bool) {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			keyPaths(c, prefix, out)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			path := n.Content[i].Value
			if prefix != "" {
				path = prefix + "." + path
			}
			out[path] = true
			keyPaths(n.Content[i+1], path, out)
		}
	}
}

// Hash identifies a site configuration's exact bytes: the first 16 hex
// digits (64 bits) of its SHA-256, as servers show it in their health
// records.
func Hash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}
