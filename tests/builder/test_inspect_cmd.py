"""`pvhyp inspect`: notes and layout printed; one line and exit 2 for a bad image."""
from __future__ import annotations

import pytest

from pvhyp.cli import main
from tests.builder.builder_kit import compress, make_bzimage, make_elf


def test_inspect_synthetic_bzimage(tmp_path, capsys):
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(make_bzimage(compress(make_elf(), "zstd")))
    ramdisk = tmp_path / "initrd"
    ramdisk.write_bytes(b"x" * 5000)
    assert main(["inspect", str(kernel), "--memory", "32", "--ramdisk", str(ramdisk)]) == 0
    out = capsys.readouterr().out
    assert "bzImage carrying a zstd-compressed ELF64" in out
    assert "HYPERCALL_PAGE       0x101000" in out and "LOADER               'generic'" in out
    for segment in ("kernel", "module0", "phys2mach", "start info", "page tables", "boot stack"):
        assert segment in out
    assert "rip 0x100000" in out and "mod_len 0x1388" in out


def test_inspect_xtf(xtf_example, tmp_path, capsys):
    kernel = tmp_path / "xtf"
    kernel.write_bytes(xtf_example)
    assert main(["inspect", str(kernel)]) == 0
    out = capsys.readouterr().out
    assert "GUEST_OS             'XTF'" in out and "pt_base 0x" in out
    assert "iret: push rcx; push r11; push rax; mov eax, 0x17; syscall" in out


@pytest.mark.parametrize("content, words", [(b"", "empty kernel image"), (b"\x7fELF\x02", "truncated ELF header"),
                                            (make_bzimage(b"\x1f\x8b" + bytes(40)), "corrupt gzip")])
def test_inspect_bad_image_is_one_line(tmp_path, capsys, content, words):
    kernel = tmp_path / "bad"
    kernel.write_bytes(content)
    assert main(["inspect", str(kernel)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err


def test_inspect_missing_file(capsys):
    assert main(["inspect", "/nonexistent/kernel"]) == 2
    assert "cannot read kernel" in capsys.readouterr().err
