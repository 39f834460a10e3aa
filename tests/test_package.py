"""The installed package: namespace mapping, console script, version."""
import subprocess
import sys

import vosrt


def test_namespace_maps_the_three_folders():
    import vosrt.export
    import vosrt.sdk
    import vosrt.training

    assert vosrt.sdk.__file__.replace("\\", "/").endswith("sdk/__init__.py")
    assert vosrt.training.__file__.replace("\\", "/").endswith("training/__init__.py")
    assert vosrt.export.__file__.replace("\\", "/").endswith("export/__init__.py")


def test_console_script_help_and_version():
    out = subprocess.run(["vosrt", "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"vosrt {vosrt.__version__}"
    help_text = subprocess.run(["vosrt", "--help"], capture_output=True, text=True, check=True).stdout
    assert "usage: vosrt" in help_text


def test_python_m_vosrt_is_the_vosrt_command():
    # "No module named vosrt.__main__": an environment whose scripts folder is not on PATH had no way to run it
    out = subprocess.run([sys.executable, "-m", "vosrt", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"vosrt {vosrt.__version__}"
    failed = subprocess.run([sys.executable, "-m", "vosrt", "run"], capture_output=True, text=True)
    assert failed.returncode == 2 and "usage: vosrt run" in failed.stderr, failed.stderr


def test_sdk_import_does_not_import_torch():
    code = "import sys, vosrt.sdk; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_family_s_session_class_is_an_attribute_of_vosrt_sdk():
    # vosrt.sdk.Tracker and vosrt.sdk.ClipSegmenter worked, vosrt.sdk.InstanceSegmenter (what load() returns for
    # a stem-seg package, as the README says) raised AttributeError: an application's isinstance check failed.
    code = ("import sys, vosrt.sdk; from vosrt.sdk import families\n"
            "for name in ('stcn', '3dc-seg', 'stem-seg'):\n"
            "    cls = families.get(name).session_class()\n"
            "    print(name, getattr(vosrt.sdk, cls.__name__) is cls)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["stcn", "True", "3dc-seg", "True", "stem-seg", "True", "False"], out.stderr


def test_the_sdk_modules_the_readme_names_are_attributes_after_import_vosrt_sdk():
    code = ("import sys, vosrt.sdk; print(vosrt.sdk.native_callbacks.hold(2), callable(vosrt.sdk.streaming.stream), "
            "callable(vosrt.sdk.masks.read_label_png), callable(vosrt.sdk.instances.cluster), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "True", "True", "True", "False"], out.stderr
