# Sourced by build steps (". /usr/local/lib/bindery/build-ca.sh && ..."): points pip, uv, git,
# Node (npm, yarn) and friends at the CA bundle the build was given as the secret "pipca", which
# never lands in a layer. Without the secret the system trust store applies: pointing the
# variables at a missing file would break TLS rather than fix it.
if [ -r /run/secrets/pipca ]; then
    export SSL_CERT_FILE=/run/secrets/pipca \
        PIP_CERT=/run/secrets/pipca \
        REQUESTS_CA_BUNDLE=/run/secrets/pipca \
        CURL_CA_BUNDLE=/run/secrets/pipca \
        GIT_SSL_CAINFO=/run/secrets/pipca \
        NODE_EXTRA_CA_CERTS=/run/secrets/pipca
fi
