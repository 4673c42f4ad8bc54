"""Builds the lmhead client package; the gRPC stubs are generated here from proto/ (never copied).

The proto directory is ../../proto relative to this file, or $LMHEAD_PROTO_DIR.
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithStubs(build_py):
    def run(self):
        super().run()
        from grpc_tools import protoc
        import grpc_tools

        proto_dir = os.environ.get("LMHEAD_PROTO_DIR", os.path.join(HERE, "..", "..", "proto"))
        source = os.path.join(proto_dir, "lmhead", "v1", "lmhead.proto")
        if not os.path.exists(source):
            raise RuntimeError(f"lmhead.proto not found under {proto_dir}; set LMHEAD_PROTO_DIR")
        well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
        # Output lands at <build_lib>/lmhead/v1/lmhead_pb2{,_grpc}.py: the proto's own path, which
        # is also this package's `lmhead.v1` subpackage.
        rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={self.build_lib}",
                          f"--grpc_python_out={self.build_lib}", source])
        if rc != 0:
            raise RuntimeError("protoc failed on lmhead.proto")


setup(cmdclass={"build_py": BuildPyWithStubs})
