"""
The client's config file: what it may hold, paths relative to it, and the
order of precedence (option, environment, file, default); then everyday
commands with no flags through the installed client.
"""

import argparse
import os
import subprocess

import pytest

from backup_client.config import ConfigError, configDir, loadConfig, resolve
from tests.helpers import TestCase
from tests.test_e2e import EndToEndCase, command


def _write(path, text):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _args(**given):
    fields = dict(server=None, ca=None, user=None, password_file=None)
    fields.update(given)
    return argparse.Namespace(**fields)


class ConfigTests(TestCase):
    def test_load(self):
        _write(
            "conf/config.toml",
            'server = "b.example:1"\nca = "ca.pem"\nuser = "alice"\npassword_file = "~/pw"\n'
            'exclude = ["*.tmp"]\nexclude_file = ["ignore"]\nexclude_caches = true\n',
        )
        config = loadConfig("conf")
        here = os.path.abspath("conf")
        self.assertEqual(
            config,
            {
                "server": "b.example:1",
                "ca": os.path.join(here, "ca.pem"),
                "user": "alice",
                "password_file": os.path.expanduser("~/pw"),
                "exclude": ["*.tmp"],
                "exclude_file": [os.path.join(here, "ignore")],
                "exclude_caches": True,
            },
        )
        self.assertEqual(loadConfig("nowhere"), {})

    def test_refused(self):
        for text, words in (
            ("servr = 'x'\n", "unknown setting 'servr'"),
            ("server = 1\n", "server must be a str"),
            ("exclude = 'x'\n", "exclude must be a list of strings"),
            ("exclude = [1]\n", "exclude must be a list of strings"),
            ("server = \n", "config.toml"),
        ):
            _write("bad/config.toml", text)
            e = self.assertRaises(ConfigError, loadConfig, "bad")
            self.assertIn(words, str(e))

    def test_precedence(self):
        config = {"server": "file:1", "user": "fileuser", "password_file": "/pw", "ca": "/ca"}
        args = _args(server="flag:1")
        resolve(args, {"BACKUP_USER": "envuser"}, config, "default:1")
        self.assertEqual(
            (args.server, args.user, args.password_file, args.ca),
            ("flag:1", "envuser", "/pw", "/ca"),
        )
        args = _args()
        resolve(args, {"BACKUP_PASSWORD": "pw"}, {}, "default:1")
        self.assertEqual((args.server, args.password_file), ("default:1", None))
        args = _args(exclude=["a"], exclude_file=[], exclude_caches=False)
        resolve(args, {}, {"exclude": ["b"], "exclude_caches": True}, "d")
        self.assertEqual((args.exclude, args.exclude_caches), (["b", "a"], True))
        self.assertEqual(configDir(None, {"XDG_CONFIG_HOME": "/x"}), "/x/backup-client")


@pytest.mark.slow
class ConfigEndToEndTests(EndToEndCase):
    def test_noFlags(self):
        """
        With server, CA, user and password file in config.toml (paths
        relative to it), backup, list and restore need no flag and no
        variable, from any folder.
        """
        conf = os.path.join(self.base, "config")
        _write(os.path.join(conf, "pw"), "pw\n")
        os.symlink(os.path.join(self.base, "certs", "ca.pem"), os.path.join(conf, "ca.pem"))
        _write(
            os.path.join(conf, "config.toml"),
            f'server = "localhost:{self.server.port}"\nca = "ca.pem"\nuser = "alice"\n'
            'password_file = "pw"\nexclude = ["*.tmp"]\n',
        )
        self.ok("register")
        _write("src/a", "a")
        _write("src/b.tmp", "b")
        env = {
            k: v
            for k, v in self.clientEnv().items()
            if k not in ("BACKUP_SERVER", "BACKUP_CA", "BACKUP_USER", "BACKUP_PASSWORD")
        }
        os.makedirs("elsewhere")

        def run(*args):
            result = subprocess.run(
                [command("backup-client"), *args],
                env=env,
                cwd="elsewhere",
                capture_output=True,
                text=True,
                timeout=120,
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            return result

        run("backup", os.path.abspath("src"))
        self.assertIn("src", run("list").stdout)
        run("restore", os.path.abspath("dest"))
        self.assertEqual(sorted(os.listdir("dest/src")), ["a"])
        _write(os.path.join(conf, "config.toml"), "nonsense = 1\n")
        bad = subprocess.run(
            [command("backup-client"), "list"], env=env, capture_output=True, text=True
        )
        self.assertEqual(bad.returncode, 2)
        self.assertIn("unknown setting 'nonsense'", bad.stderr)
