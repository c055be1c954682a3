"""
The layout by role holds: the client never imports server code, and the
shared packages (L{backup_proto.wire}, L{backup_proto.archive}) import
neither side.  Checked on the source, by package prefix, so that a new
module is covered the day it is added.
"""

import ast
import os
import re

from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Package prefix -> prefixes its modules may not import.
FORBIDDEN = {
    "backup_client": ("backup_proto.server",),
    "backup_proto.wire": ("backup_proto.server", "backup_client", "backup_proto.archive"),
    "backup_proto.archive": ("backup_proto.server", "backup_client"),
    "backup_proto.allocator": ("backup_proto.server", "backup_client"),
    "backup_proto.certs": ("backup_proto.server", "backup_client"),
}


def moduleImports(path, module):
    """
    @return: the absolute names of the modules that C{path} (the module
        C{module}) imports, anywhere in it (function-level imports too).
    """
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module.rpartition(".")[0] if not path.endswith("__init__.py") else module
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            names.add(prefix)
            # "from backup_proto.server import tap" imports a module too
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def ourModules():
    """
    @return: C{(module name, path)} for every module of ours.
    """
    for top in ("backup_proto", "backup_client"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    rel = os.path.relpath(path, ROOT)[: -len(".py")]
                    module = rel.replace(os.sep, ".").removesuffix(".__init__")
                    yield module, path


def within(name, prefix):
    return name == prefix or name.startswith(prefix + ".")


class LayoutTests(TestCase):
    def test_boundaries(self):
        """
        No module imports across a boundary of L{FORBIDDEN}.
        """
        crossings = []
        for module, path in ourModules():
            for owner, forbidden in FORBIDDEN.items():
                if not within(module, owner):
                    continue
                for imported in moduleImports(path, module):
                    crossings.extend(
                        f"{module} imports {imported}"
                        for prefix in forbidden
                        if within(imported, prefix)
                    )
        self.assertEqual(crossings, [])

    def test_scanSeesImports(self):
        """
        The scan finds real imports, plain, from-, relative and in a
        function, so that an empty scan cannot pass for a clean one.
        """
        modules = dict(ourModules())
        self.assertIn("backup_client.cli", modules)
        self.assertIn("backup_proto.wire.frames", modules)
        imported = moduleImports(
            modules["backup_proto.server.protocol"], "backup_proto.server.protocol"
        )
        self.assertIn("backup_proto.wire.frames", imported)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "import backup_proto.server.tap\n"
                "from .. import server\n"
                "def f():\n    from backup_proto.server import storage\n"
            )
        found = moduleImports(path, "backup_proto.archive.x")
        self.assertIn("backup_proto.server.tap", found)
        self.assertIn("backup_proto.server", found)
        self.assertIn("backup_proto.server.storage", found)

    def test_testCaseNames(self):
        """
        Every module's C{test-case-name} marker names test modules that
        exist, and every module of ours but the packages' and the plugin's
        has one.
        """
        wrong, missing = [], []
        for module, path in ourModules():
            with open(path, encoding="utf-8") as f:
                first = f.readline()
            marker = re.match(r"# -\*- test-case-name: (\S+) -\*-", first)
            if marker is None:
                if not path.endswith("__init__.py"):
                    missing.append(module)
                continue
            for name in marker.group(1).split(","):
                if not os.path.exists(os.path.join(ROOT, *name.split(".")) + ".py"):
                    wrong.append(f"{module}: {name}")
        self.assertEqual((wrong, missing), ([], []))
