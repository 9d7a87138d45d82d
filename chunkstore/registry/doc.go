// Package registry is the chunk store in an OCI registry repository
// (oci://HOST[:PORT]/REPO): the chunks of a bootfs image live in the same
// repository as its boot image, so a node needs nothing but the registry.
//
// Layout. Chunks are casync chunk frames (zstd, as in a .cacnk file)
// packed into pack blobs of about 8 MiB, in the order the archive first
// uses them; a chunk is read with one HTTP Range request. A chunk map (a
// JSON blob) says, for every chunk of one image, which pack holds it and
// where. Packs are never layers of the runnable image: an OCI manifest
// whose config is the chunk map and whose layers are the packs keeps them
// alive against garbage collection. mkimage --push gives that manifest
// the boot image as its subject and tags it sha256-<boot image
// hex>.bootfs (distribution 2.8 has no referrers API, so the tag is what
// keeps it); a plain --store oci://… write tags it bootfs-chunks-<map
// hex>. A second image pushed to the repository finds the chunks already
// there through those manifests and uploads only the new ones.
//
// Store URLs:
//
//	oci://host[:port]/repo               every chunk map tagged in repo
//	oci://host[:port]/repo@sha256:<hex>  the chunk map with that digest (what mkimage writes into a boot image)
//	oci://host[:port]/repo:tag           the chunk map of the boot image repo:tag
//
// Every chunk is verified against its ID before it is returned, and
// every blob but the packs (read by range) against its digest. Each call
// makes one attempt: retries belong to the store decorators, which
// chunkstore/opener composes around it for oci:// URLs. Store.Commit is
// a chunkstore.Committer, which the decorators pass on.
//
// The protocol (ping, bearer-token challenge, basic auth, uploads,
// manifests) is go-containerregistry's; this package adds the range reads
// it lacks. It must not import desync, mkimage or the Docker client:
// boot links it.
package registry
