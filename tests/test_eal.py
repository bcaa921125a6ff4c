"""EAL command-line parsing: valid forms, and one test per kind of mistake."""
from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from pmd import log as pmdlog
from pmd.mbuf import configure_memory
from pmd.eal import EalConfig, EalError, eal_init, parse_coremask, parse_corelist, parse_eal_args

CPUS = {0, 1}


@pytest.fixture(autouse=True)
def _process_wide_settings_restored() -> Iterator[None]:
    """eal_init configures logging and pool memory for the process: undo it."""
    yield
    pmdlog.reset()
    configure_memory()


def parse(*argv: str, cpus: set[int] = CPUS) -> tuple[EalConfig, list[str]]:
    return parse_eal_args(list(argv), available_cpus=cpus)


def lcores(*argv: str, cpus: set[int] = CPUS) -> dict[int, int]:
    return parse(*argv, cpus=cpus)[0].lcores


# ---- valid forms -------------------------------------------------------

@pytest.mark.parametrize(
    "argv, expected",
    [
        (["-l", "0-1"], {0: 0, 1: 1}),
        (["-l", "0,1"], {0: 0, 1: 1}),
        (["-l0"], {0: 0}),
        (["-l", "1"], {1: 1}),
        (["--lcores", "0-1"], {0: 0, 1: 1}),
        (["--lcores=1,0"], {0: 0, 1: 1}),
        (["--lcores", "0@0,1@0"], {0: 0, 1: 0}),
        (["--lcores", "1@(0)"], {1: 0}),
        (["--lcores", "(0,1)@0"], {0: 0, 1: 0}),
        (["--lcores", "(2-3,5)@1"], {2: 1, 3: 1, 5: 1}),
        (["--lcores", "2-3@1"], {2: 1, 3: 1}),
        (["--lcores", "(0,1)"], {0: 0, 1: 1}),
        (["--lcores", "4@(1,0)"], {4: 0}),  # a cpuset pins to its lowest cpu
        (["-c", "0x3"], {0: 0, 1: 1}),
        (["-c", "3"], {0: 0, 1: 1}),
        (["-c2"], {1: 1}),
        (["-c", "0X2"], {1: 1}),
    ],
)
def test_lcore_forms(argv: list[str], expected: dict[int, int]) -> None:
    got = lcores(*argv)
    assert got == expected
    assert list(got) == sorted(got)


def test_lcores_are_ordered_by_lcore_id() -> None:
    assert list(parse_corelist("3@0,1@1,2@0", {0, 1})) == [1, 2, 3]
    assert parse_coremask("0x5", {0, 2}) == {0: 0, 2: 2}


def test_default_lcores_are_all_available_cpus() -> None:
    config, app_args = parse(cpus={0, 2, 3})
    assert config.lcores == {0: 0, 2: 2, 3: 3}
    assert config.main_lcore == 0
    assert config.worker_lcores == [2, 3]
    assert app_args == []


def test_default_available_cpus_is_the_affinity_mask() -> None:
    affinity = os.sched_getaffinity(0)
    config, _ = parse_eal_args([])
    assert set(config.lcores) == affinity
    assert parse_corelist(str(min(affinity))) == {min(affinity): min(affinity)}


def test_defaults() -> None:
    config, _ = parse("-l", "0-1")
    assert (config.main_lcore, config.worker_lcores) == (0, [1])
    assert (config.log_level, config.file_prefix, config.vdevs) == ("info", "vhostpci", [])


@pytest.mark.parametrize("opt", ["--main-lcore", "--master-lcore"])
def test_main_lcore(opt: str) -> None:
    config, _ = parse("-l", "0-1", opt, "1")
    assert config.main_lcore == 1
    assert config.worker_lcores == [0]
    assert parse("-l", "0-1", f"{opt}=1")[0].main_lcore == 1


def test_vdevs_in_command_line_order_with_devargs() -> None:
    config, _ = parse(
        "--vdev", "net_ring0,peer=net_ring1,size=256",
        "--vdev=net_ring1,peer=net_ring0",
        "--vdev", "net_null0,size=128,copy=1",
    )
    assert [v.name for v in config.vdevs] == ["net_ring0", "net_ring1", "net_null0"]
    assert config.vdevs[0].args == {"peer": "net_ring1", "size": 256}
    assert config.vdevs[1].args["size"] == 1024  # driver default
    assert config.vdevs[2].args == {"size": 128, "copy": True}
    assert config.vdevs[2].text == "net_null0,size=128,copy=1"


@pytest.mark.parametrize("level", ["debug", "info", "notice", "warning", "error", "critical", "DEBUG", "1", "8", "lib.eal:debug", "pmd.*:7", "vhost.*,debug", "help"])
def test_log_level(level: str) -> None:
    assert parse("--log-level", level)[0].log_level == level
    assert parse(f"--log-level={level}")[0].log_level == level


def test_file_prefix() -> None:
    assert parse("--file-prefix", "vm1")[0].file_prefix == "vm1"
    assert parse("--file-prefix=vm2")[0].file_prefix == "vm2"


def test_metrics_address() -> None:
    assert parse()[0].metrics is None  # off by default
    assert parse("--metrics", "9100")[0].metrics == ("127.0.0.1", 9100)  # loopback unless a host is given
    assert parse("--metrics=0.0.0.0:9100")[0].metrics == ("0.0.0.0", 9100)
    assert parse("--metrics", "[::1]:9100")[0].metrics == ("::1", 9100)


@pytest.mark.parametrize("value", ["x", "70000", ":9100", "host:", "9100:x"])
def test_bad_metrics_address(value: str) -> None:
    expect_error(f"--metrics={value}", contains=[repr(value)])


def test_double_dash_splits_app_args() -> None:
    config, app_args = parse("-l", "0-1", "--", "-i", "--nb-cores=1", "--", "--vdev", "x")
    assert config.lcores == {0: 0, 1: 1}
    assert app_args == ["-i", "--nb-cores=1", "--", "--vdev", "x"]
    assert parse("--")[1] == []


def test_dpdk_compat_options_are_ignored() -> None:
    config, app_args = parse(
        "--no-pci", "--no-huge", "--in-memory", "-m", "512", "-m1024", "--socket-mem", "512,512",
        "--socket-mem=1", "-n", "4", "-n4", "-l", "0", "--", "-a",
    )
    assert config.lcores == {0: 0}
    assert app_args == ["-a"]


def test_last_repeated_value_wins() -> None:
    config, _ = parse("--log-level", "debug", "--log-level", "error", "--file-prefix", "a", "--file-prefix", "b")
    assert (config.log_level, config.file_prefix) == ("error", "b")
    assert config.log_levels == ["debug", "error"]  # --log-level accumulates, as DPDK's


# A typical DPDK testpmd command line, pasted: every EAL option is accepted.
PASTED = ["-l", "0-1", "-n", "4", "-a", "0000:00:04.0", "--huge-dir", "/", "--no-telemetry", "--iova-mode=va",
          "--proc-type=primary", "--single-file-segments", "--socket-mem", "1024", "--in-memory",
          "--file-prefix=vm2", "--log-level=lib.eal:notice", "--log-level", "pmd.net.*,debug", "-v",
          "--vdev", "net_ring0", "--", "-i", "--nb-cores=1"]


def test_pasted_dpdk_command_line() -> None:
    config, app_args = parse(*PASTED)
    assert app_args == ["-i", "--nb-cores=1"]
    assert (config.huge_dir, config.telemetry, config.file_prefix, config.print_version) == ("/", False, "vm2", True)
    assert [v.name for v in config.vdevs] == ["net_ring0"]
    notes = "\n".join(config.notices)
    for opt in ("-n", "-a", "--iova-mode", "--single-file-segments", "--socket-mem", "--in-memory"):
        assert f"{opt}: no effect here (" in notes
    assert len(config.notices) == 6  # one line per option, nothing for implemented ones


def test_memory_options() -> None:
    config, _ = parse("--no-huge", "-m", "512")
    assert (config.no_huge, config.memory_mb, config.huge_dir) == (True, 512, None)
    expect_error("-m", "lots", contains=["'lots'"])
    expect_error("--huge-dir", "/nonexistent-dir", contains=["'/nonexistent-dir'"])
    expect_error("--no-huge", "--huge-dir", "/", contains=["--no-huge", "--huge-dir"])


def test_secondary_process_is_an_error() -> None:
    expect_error("--proc-type", "secondary", contains=["secondary", "not supported"])
    expect_error("--proc-type=tertiary", contains=["'tertiary'"])


def test_help_and_version_skip_other_checks() -> None:
    config, app = parse("-l", "0-99", "-h", "--", "-i")
    assert config.show_help and app == ["-i"]
    assert parse("--version", "--bogus")[0].show_version


def test_eal_init_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        eal_init(["--help"], prog="prog", app_help=lambda: "APP OPTIONS")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "Usage: prog [EAL options] -- [application options]" in out
    for opt in ("-l CORELIST", "--vdev", "--log-level=<type-match>:<level>", "--huge-dir", "--no-telemetry",
                "--iova-mode", "APP OPTIONS"):
        assert opt in out, opt


def test_eal_init_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        eal_init(["--version"], prog="prog")
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("prog (vhostpci ")


def test_eal_init_prints_notices(capsys: pytest.CaptureFixture[str]) -> None:
    eal_init(["-l", "0", "--no-pci", "--no-pci", "-v"], available_cpus=CPUS)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("EAL: RTE Version: 'vhostpci ")
    assert err[1:] == ["EAL: --no-pci: no effect here (no PCI bus here: ports are --vdev devices)"]


def test_log_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        eal_init(["--log-level", "vhost*:debug", "--log-level", "help"], available_cpus=CPUS)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert re.search(r"lib.vhost.config +debug +prefix VHOST_CONFIG", out), out
    assert re.search(r"lib.eal +info ", out), out


# ---- mistakes: each message names the offending token -------------------

def expect_error(*argv: str, contains: list[str]) -> str:
    with pytest.raises(EalError) as info:
        parse(*argv)
    msg = str(info.value)
    assert "\n" not in msg
    for token in contains:
        assert token in msg, f"{token!r} not in {msg!r}"
    return msg


def test_cpu_not_present() -> None:
    msg = expect_error("-l", "0-7", contains=["'0-7'", "cpu 2", "available: 0-1"])
    assert msg == "lcore list '0-7': cpu 2 does not exist on this machine (available: 0-1)"
    expect_error("--lcores", "0@5", contains=["'0@5'", "cpu 5"])
    expect_error("--lcores", "0@(0,3)", contains=["'0@(0,3)'", "cpu 3"])
    expect_error("-c", "0x10", contains=["'0x10'", "cpu 4"])


def test_lcore_id_out_of_range() -> None:
    expect_error("--lcores", "200@0", contains=["'200@0'", "lcore 200"])
    expect_error("-l", "0-99999999999", contains=["'0-99999999999'", "out of range"])


@pytest.mark.parametrize("mask", ["0x0", "0", "0x", "000"])
def test_empty_mask(mask: str) -> None:
    expect_error("-c", mask, contains=["empty core mask", repr(mask)])


@pytest.mark.parametrize("mask", ["0xg1", "zz", "-1x", "0x1 2", "1.0"])
def test_non_hex_mask(mask: str) -> None:
    expect_error(f"-c{mask}", contains=[repr(mask), "hexadecimal"])


@pytest.mark.parametrize(
    "corelist, token",
    [
        ("0-", "'0-'"),
        ("-1", "'-1'"),
        ("3-1", "'3-1'"),
        ("a", "'a'"),
        ("0,a", "'a'"),
        ("0,,1", "empty element"),
        ("", "''"),
        ("0@", "'0@'"),
        ("@0", "'@0'"),
        ("0@1@1", "'0@1@1'"),
        ("(0,1", "'('"),
        ("0,1)", "')'"),
        ("((0))@0", "'('"),
        ("(0)1@0", "'(0)1'"),
        ("(0-)@1", "'0-'"),
        ("0@(a)", "'a'"),
    ],
)
def test_malformed_corelist(corelist: str, token: str) -> None:
    expect_error(f"--lcores={corelist}", contains=[repr(corelist), token])


@pytest.mark.parametrize("corelist", ["0,0", "0-1,1", "(0,1)@0,1@1", "0@0,0@1"])
def test_duplicate_lcore(corelist: str) -> None:
    expect_error("-l", corelist, contains=[repr(corelist), "given twice"])


@pytest.mark.parametrize("argv", [["-c", "1", "-l", "0"], ["-l", "0", "-c", "1"], ["-l", "0", "--lcores", "1"]])
def test_only_one_core_option(argv: list[str]) -> None:
    expect_error(*argv, contains=[argv[0], argv[2], "only one of"])


def test_main_lcore_not_in_set() -> None:
    expect_error("-l", "0-1", "--main-lcore", "5", contains=["'5'", "lcore 5", "0-1"])
    expect_error("-l", "0", "--master-lcore", "x", contains=["--master-lcore", "'x'"])


@pytest.mark.parametrize(
    "vdev, token",
    [
        (",", "','"),
        ("net_ring", "'net_ring'"),
        ("net_ring0,size", "'size'"),
        ("net_foo0", "'net_foo'"),
        ("net_ring0,bogus=1", "'bogus'"),
        ("net_ring0,size=abc", "'abc'"),
        ("net_ring0,size=3", "size"),
        ("net_ring0,peer=eth0", "'eth0'"),
        ("net_null0,copy=maybe", "'maybe'"),
    ],
)
def test_bad_vdev(vdev: str, token: str) -> None:
    expect_error("--vdev", vdev, contains=[token])


def test_duplicate_vdev_name() -> None:
    expect_error("--vdev", "net_null0", "--vdev", "net_null0,size=128", contains=["'net_null0'", "given twice"])


@pytest.mark.parametrize("level", ["loud", "0", "9", ":debug", "lib.eal:", "lib.eal:verbose", "(,debug", ",7"])
def test_bad_log_level(level: str) -> None:
    expect_error("--log-level", level, contains=[repr(level)])


@pytest.mark.parametrize("prefix", ["", "a/b"])
def test_bad_file_prefix(prefix: str) -> None:
    expect_error(f"--file-prefix={prefix}", contains=[repr(prefix)])


@pytest.mark.parametrize("argv, token", [(["--foo"], "'--foo'"), (["--foo=1"], "'--foo'"), (["-x"], "'-x'"), (["-l", "0", "-i"], "'-i'")])
def test_unknown_option(argv: list[str], token: str) -> None:
    expect_error(*argv, contains=["unknown EAL option", token])


def test_positional_before_double_dash() -> None:
    expect_error("-l", "0", "foo", contains=["'foo'", "'--'"])


def test_flag_with_value() -> None:
    expect_error("--no-pci=1", contains=["'--no-pci'"])


@pytest.mark.parametrize(
    "argv, opt",
    [
        (["-l"], "'-l'"),
        (["--lcores"], "'--lcores'"),
        (["-c"], "'-c'"),
        (["--vdev"], "'--vdev'"),
        (["--main-lcore", "--", "x"], "'--main-lcore'"),
        (["--log-level", "--file-prefix", "x"], "'--log-level'"),
        (["-m"], "'-m'"),
    ],
)
def test_missing_value(argv: list[str], opt: str) -> None:
    expect_error(*argv, contains=[opt, "requires a value"])


# ---- eal_init ----------------------------------------------------------

def test_eal_init_returns_config() -> None:
    config, app_args = eal_init(["-l", "0", "--", "-i"], available_cpus=CPUS)
    assert config.lcores == {0: 0}
    assert app_args == ["-i"]


def test_eal_init_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        eal_init(["-l", "0-7"], available_cpus=CPUS)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "EAL: error: lcore list '0-7': cpu 2 does not exist on this machine (available: 0-1)\n"
