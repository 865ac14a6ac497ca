#!/bin/sh
# certbot deploy hook: install the renewed certificate for oca-server and
# make it reload (SIGHUP through systemctl reload). Install as
# /etc/oca/certbot-deploy-hook.sh (mode 0755) and give it to certbot with
# --deploy-hook, or drop it in /etc/letsencrypt/renewal-hooks/deploy/.
#
# certbot sets RENEWED_LINEAGE to /etc/letsencrypt/live/<name>. The files are
# copied (not linked) so that the key is owned by the service user with mode
# 0600: oca-server warns about a key the group or others can read.
# A bad pair is refused at reload and the old one keeps being served
# (oca-server logs why; /health says "TLS reload refused").
set -eu
: "${RENEWED_LINEAGE:?certbot sets RENEWED_LINEAGE}"
dest=/etc/oca/tls
user=oca
install -o "$user" -g "$user" -m 0644 "$RENEWED_LINEAGE/fullchain.pem" "$dest/fullchain.pem.new"
install -o "$user" -g "$user" -m 0600 "$RENEWED_LINEAGE/privkey.pem" "$dest/privkey.pem.new"
mv -f "$dest/fullchain.pem.new" "$dest/fullchain.pem"
mv -f "$dest/privkey.pem.new" "$dest/privkey.pem"
systemctl reload oca-server.service
