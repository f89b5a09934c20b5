# Build as yourself, install as root:
#
#   make                  release binaries, man pages and completions (cargo; no root)
#   sudo make install     copies them and the system files; never runs cargo
#   make deb              target/debian/watchd_VERSION-1_ARCH.deb (needs cargo-deb)
#
# make install DESTDIR=/tmp/root stages the tree under /tmp/root (what packages do).
# PREFIX (default /usr) moves the binaries, man pages, completions and docs; the unit, the
# bus policy and activation file, and the polkit actions go where systemd, dbus-daemon and
# polkitd read them whatever the prefix (UNITDIR, DBUSDIR, POLKITDIR), and the unit's
# ExecStart= follows BINDIR. The README's "Install" section lists every file.

PREFIX ?= /usr
SYSCONFDIR ?= /etc
BINDIR ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
DOCDIR ?= $(DATADIR)/doc/watchd
UNITDIR ?= /usr/lib/systemd/system
DBUSDIR ?= /usr/share/dbus-1
POLKITDIR ?= /usr/share/polkit-1
CARGO ?= cargo
CARGO_TARGET_DIR ?= target
# The cargo profile: release, or dev for a quick debug build (the packaging test uses the
# binaries `cargo test` built).
PROFILE ?= release
# More options for cargo-deb, e.g. --output FILE.
CARGO_DEB_FLAGS ?=
# What watchd-docgen makes; outside target/ so that cargo-deb reads it as plain files (and
# compresses the man pages as Debian wants) rather than as build products.
GEN ?= build

RELEASE := $(CARGO_TARGET_DIR)/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))
INSTALL ?= install

.PHONY: all install uninstall deb clean

all:
	$(CARGO) build --profile $(PROFILE) --locked -p watchd -p watchctl -p watchd-docgen
	rm -rf $(GEN)
	$(RELEASE)/watchd-docgen $(GEN)

# Fails (instead of building as root) when `make` has not run.
install:
	@for f in $(RELEASE)/watchd $(RELEASE)/watchctl $(GEN)/man/watchd.8; do \
	    [ -e "$$f" ] || { echo "$$f is missing: run make (as yourself) first" >&2; exit 1; }; \
	done
	$(INSTALL) -D -m 0755 -t $(DESTDIR)$(BINDIR) $(RELEASE)/watchd $(RELEASE)/watchctl
	$(INSTALL) -d $(DESTDIR)$(UNITDIR)
	sed 's|^ExecStart=/usr/bin/watchd|ExecStart=$(BINDIR)/watchd|' systemd/watchd.service \
	    > $(DESTDIR)$(UNITDIR)/watchd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/watchd.service
	$(INSTALL) -D -m 0644 -t $(DESTDIR)$(DBUSDIR)/system.d dbus/org.watchd.Watchd1.conf
	$(INSTALL) -D -m 0644 -t $(DESTDIR)$(DBUSDIR)/system-services dbus/org.watchd.Watchd1.service
	$(INSTALL) -D -m 0644 -t $(DESTDIR)$(DATADIR)/dbus-1/interfaces dbus/org.watchd.Watchd1.xml
	$(INSTALL) -D -m 0644 -t $(DESTDIR)$(POLKITDIR)/actions data/org.watchd.Watchd1.policy
	# A configuration already there is the administrator's: kept.
	[ -e $(DESTDIR)$(SYSCONFDIR)/watchd/watchd.toml ] || \
	    $(INSTALL) -D -m 0644 data/watchd.toml $(DESTDIR)$(SYSCONFDIR)/watchd/watchd.toml
	$(INSTALL) -D -m 0644 -t $(DESTDIR)$(MANDIR)/man1 $(GEN)/man/*.1
	$(INSTALL) -D -m 0644 -t $(DESTDIR)$(MANDIR)/man5 $(GEN)/man/*.5
	$(INSTALL) -D -m 0644 -t $(DESTDIR)$(MANDIR)/man8 $(GEN)/man/*.8
	$(INSTALL) -D -m 0644 $(GEN)/completions/watchctl.bash \
	    $(DESTDIR)$(DATADIR)/bash-completion/completions/watchctl
	$(INSTALL) -D -m 0644 -t $(DESTDIR)$(DATADIR)/zsh/vendor-completions $(GEN)/completions/_watchctl
	$(INSTALL) -D -m 0644 -t $(DESTDIR)$(DATADIR)/fish/vendor_completions.d \
	    $(GEN)/completions/watchctl.fish
	$(INSTALL) -D -m 0644 -t $(DESTDIR)$(DOCDIR) README.md docs/*.md LICENSE-MIT LICENSE-APACHE
	$(INSTALL) -D -m 0644 -t $(DESTDIR)$(DOCDIR)/examples data/50-watchd-example.rules \
	    docs/examples/* crates/watchd-proto/include/watchd.h

# Removes what install copied, except the configuration in SYSCONFDIR.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/watchd $(DESTDIR)$(BINDIR)/watchctl
	rm -f $(DESTDIR)$(UNITDIR)/watchd.service
	rm -f $(DESTDIR)$(DBUSDIR)/system.d/org.watchd.Watchd1.conf
	rm -f $(DESTDIR)$(DBUSDIR)/system-services/org.watchd.Watchd1.service
	rm -f $(DESTDIR)$(DATADIR)/dbus-1/interfaces/org.watchd.Watchd1.xml
	rm -f $(DESTDIR)$(POLKITDIR)/actions/org.watchd.Watchd1.policy
	rm -f $(DESTDIR)$(MANDIR)/man1/watchctl.1 $(DESTDIR)$(MANDIR)/man1/watchctl-*.1
	rm -f $(DESTDIR)$(MANDIR)/man5/watchd.toml.5 $(DESTDIR)$(MANDIR)/man5/org.watchd.Watchd1.5
	rm -f $(DESTDIR)$(MANDIR)/man8/watchd.8
	rm -f $(DESTDIR)$(DATADIR)/bash-completion/completions/watchctl
	rm -f $(DESTDIR)$(DATADIR)/zsh/vendor-completions/_watchctl
	rm -f $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/watchctl.fish
	rm -rf $(DESTDIR)$(DOCDIR)

# The package from what `make` built: cargo-deb only collects (crates/watchd/Cargo.toml,
# [package.metadata.deb], lists the files) and strips the binaries.
deb: all
	$(CARGO) deb -p watchd --profile $(PROFILE) --no-build --locked --strip $(CARGO_DEB_FLAGS)

clean:
	rm -rf $(GEN)
