# JupyterHub 5.2.1 on the workspace node (stacks/workspace, service
# `jupyterhub`; this file is mounted read-only at
# /etc/jupyterhub/jupyterhub_config.py). Checked against JupyterHub 5.2.1's
# docs and source (jupyterhub/auth.py, spawner.py, proxy.py, app.py).
#
# The hub runs in quay.io/jupyterhub/k8s-singleuser-sample:4.0.0, an image
# holding JupyterHub 5.2.1 with JupyterLab 4.3 (zero-to-jupyterhub-k8s
# 4.0.0, images/singleuser-sample): the plain jupyterhub/jupyterhub image
# has no JupyterLab, so no single-user server could start in it. Its
# configurable-http-proxy is the stack's `jupyterhub-proxy` service.
#
# Users: system accounts of this container, logged in with PAM
# (PAMAuthenticator, JupyterHub's default authenticator); there is no
# sign-up page and no first-visitor admin. The admin `admin` gets its
# password from the stack secret JUPYTERHUB_ADMIN_PASSWORD at every start.
# The admin adds users at /hub/admin (a system account is made for each,
# without a password) and sets their password on the node:
#   docker compose -p workspace exec jupyterhub passwd NAME
# Users change theirs with `passwd` in a JupyterLab terminal. Accounts
# (name, uid, password hash) are kept in /srv/jupyterhub/accounts.json
# (root, 0600) and made again when the container is recreated; homes live
# in the `jupyterhub-home` volume.
#
# Spawner: LocalProcessSpawner (the default), each user's JupyterLab a
# process of this container running as that user.

import json
import os
import pwd
import subprocess

from jupyterhub.spawner import LocalProcessSpawner

c = get_config()  # noqa: F821 (JupyterHub's config loader defines it)

STATE = "/srv/jupyterhub"
ACCOUNTS = os.path.join(STATE, "accounts.json")
# Hub users' uids: the image's own user (jovyan) is 1000; nobody is 65534.
FIRST_UID, LAST_UID = 1001, 65533
ADMIN = "admin"


def _run(args, stdin=None):
    """Run a command, secrets only on its standard input."""
    subprocess.run(args, input=stdin, text=True, check=True)


def save_accounts(*_):
    """Write the hub users' accounts where a recreated container finds them."""
    with open("/etc/shadow") as f:
        hashes = dict(line.split(":")[:2] for line in f if ":" in line)
    accounts = {
        p.pw_name: {"uid": p.pw_uid, "gid": p.pw_gid, "hash": hashes.get(p.pw_name, "!")}
        for p in pwd.getpwall()
        if FIRST_UID <= p.pw_uid <= LAST_UID
    }
    tmp = ACCOUNTS + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(accounts, f)
    os.replace(tmp, ACCOUNTS)


def restore_accounts():
    """Make the saved accounts again (same uid, so homes keep their owner)."""
    try:
        with open(ACCOUNTS) as f:
            accounts = json.load(f)
    except FileNotFoundError:
        return
    for name, a in accounts.items():
        try:
            pwd.getpwnam(name)
            continue
        except KeyError:
            pass
        subprocess.run(["groupadd", "--gid", str(a["gid"]), name], check=False)
        _run(["useradd", "--uid", str(a["uid"]), "--gid", str(a["gid"]),
              "--home-dir", "/home/" + name, "--shell", "/bin/bash", name])
        _run(["chpasswd", "--encrypted"], stdin=f"{name}:{a['hash']}\n")


def ensure_admin():
    """The admin account, its password the stack secret (never on argv)."""
    password = os.environ.pop("JUPYTERHUB_ADMIN_PASSWORD", "")
    if not password:
        raise SystemExit("JUPYTERHUB_ADMIN_PASSWORD is empty: the stack's secrets file lacks it")
    try:
        pwd.getpwnam(ADMIN)
    except KeyError:
        # The command LocalAuthenticator.add_user_cmd defaults to on Debian.
        _run(["adduser", "--quiet", "--gecos", "", "--disabled-password", ADMIN])
    _run(["chpasswd"], stdin=f"{ADMIN}:{password}\n")


os.makedirs(STATE, mode=0o700, exist_ok=True)
restore_accounts()
ensure_admin()
save_accounts()

# Hub state on the `jupyterhub` volume.
c.JupyterHub.db_url = "sqlite:///" + os.path.join(STATE, "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(STATE, "jupyterhub_cookie_secret")

# The proxy runs in its own container (ConfigurableHTTPProxy.should_start:
# "Set to False if the proxy is managed externally, such as by ... docker");
# both sides read the token from CONFIGPROXY_AUTH_TOKEN (the stack secret
# JUPYTERHUB_PROXY_TOKEN). The hub listens on the stack's network, and the
# proxy reaches it, and the single-user servers, by the service name.
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "http://jupyterhub-proxy:8001"
c.JupyterHub.hub_bind_url = "http://0.0.0.0:8081"
c.JupyterHub.hub_connect_url = "http://jupyterhub:8081"

# Authentication: PAM against this container's accounts.
c.JupyterHub.authenticator_class = "pam"
c.Authenticator.admin_users = {ADMIN}
# Users the admin adds at /hub/admin may log in (JupyterHub 5: with
# allow_all off and no allowed_users, only they and the admin can).
c.Authenticator.allow_existing_users = True
# Adding a user makes its system account (adduser --disabled-password).
c.LocalAuthenticator.create_system_users = True


class ContainerLocalProcessSpawner(LocalProcessSpawner):
    """LocalProcessSpawner whose servers the proxy container reaches.

    The servers listen on every address of this container (Spawner.ip);
    start() then returns this container's name on the stack's network
    instead of 0.0.0.0, as the Hub's target for the proxy (Spawner.start
    returns the (ip, port) where the Hub can connect to the server).
    """

    async def start(self):
        _ip, port = await super().start()
        return ("jupyterhub", port)


c.JupyterHub.spawner_class = ContainerLocalProcessSpawner
c.Spawner.ip = "0.0.0.0"
c.Spawner.default_url = "/lab"
# A password changed since the last start is saved when anyone's server
# starts (and at every hub start).
c.Spawner.pre_spawn_hook = save_accounts
