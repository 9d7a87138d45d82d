# The converter as a container: mkimage and boot (which mkimage puts into
# every boot image; it looks for it next to itself) on an empty base. It
# is built from the static binaries `make` builds, with bin/ as the build
# context, so it builds offline:
#
#	make build && docker build -t bootfs/mkimage -f Dockerfile bin
#
# It reads the source image and loads the boot image through the Docker
# socket, and writes the chunks to the store volume:
#
#	docker run --rm -v /var/run/docker.sock:/var/run/docker.sock -v STORE:/store \
#	    bootfs/mkimage --store /store --runtime-store URL SOURCE TARGET
FROM scratch
LABEL org.opencontainers.image.title="bootfs mkimage" \
      org.opencontainers.image.description="Converts a container image into a lazily fetched bootfs image" \
      org.opencontainers.image.source="https://github.com/bootfs/bootfs"
COPY mkimage boot /
# A tar source spills its payload to a temporary file; scratch has no
# /tmp, and WORKDIR creates it.
WORKDIR /tmp
ENV TMPDIR=/tmp
ENTRYPOINT ["/mkimage"]
