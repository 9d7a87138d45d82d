package registry

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
)

// dockerConfig is the part of a docker config.json that holds
// credentials inline.
type dockerConfig struct {
	Auths map[string]struct {
		Auth          string `json:"auth"`
		Username      string `json:"username"`
		Password      string `json:"password"`
		IdentityToken string `json:"identitytoken"`
		RegistryToken string `json:"registrytoken"`
	} `json:"auths"`
	CredsStore  string            `json:"credsStore"`
	CredHelpers map[string]string `json:"credHelpers"`
}

// authFromFile returns the credentials for host in the docker
// config.json file name, or anonymous ones when name is "" or the file
// has none for host. Credential helpers are not run: boot ships without
// them, and a file is what a container can be given.
func authFromFile(name, host string) (authn.Authenticator, error) {
	if name == "" {
		return authn.Anonymous, nil
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("registry credentials: %w", err)
	}
	var cfg dockerConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("registry credentials %s: not a docker config.json: %v", name, err)
	}
	for key, a := range cfg.Auths {
		if authHost(key) != host {
			continue
		}
		ac := authn.AuthConfig{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
		if a.Auth != "" {
			dec, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, fmt.Errorf("registry credentials %s: auths[%q].auth is not base64: %v", name, key, err)
			}
			user, pass, ok := strings.Cut(string(dec), ":")
			if !ok {
				return nil, fmt.Errorf("registry credentials %s: auths[%q].auth is not base64 of user:password", name, key)
			}
			ac.Username, ac.Password = user, pass
		}
		return authn.FromConfig(ac), nil
	}
	if _, ok := cfg.CredHelpers[host]; ok || cfg.CredsStore != "" {
		return nil, fmt.Errorf("registry credentials %s: no inline entry for %s, and credential helpers are not run; write the credentials into auths (docker login --password-stdin with DOCKER_CONFIG pointing at a new directory does)", name, host)
	}
	return authn.Anonymous, nil
}

// authHost returns the host of a config.json auths key, which may be a
// URL such as https://index.docker.io/v1/.
func authHost(key string) string {
	key = strings.TrimPrefix(strings.TrimPrefix(key, "https://"), "http://")
	key, _, _ = strings.Cut(key, "/")
	if key == "index.docker.io" || key == "registry-1.docker.io" {
		return "index.docker.io"
	}
	return key
}
