"""Kernel specs (mfarray.kernels.spec): one object carries what a dispatcher must know about a
scalar kernel k(x, x') of the metric-NTK Theta_{ijkl} = delta_ik delta_jl k(x, x') (eq. 2.23):
its inputs (points z or real features), pairwise or not, symmetry and hyper-parameters, through
partials (nested too), the rescaling trick (2.16) and user closures."""

import functools
import json
import pickle

import dask.array as da
import numpy as np
import pytest

import mfarray as mf
from mfarray.kernels import (Kernel, Rescaling, as_kernel, cosine_ntk, delta, det_metric_rescaling,
                             gaussian_fs, gaussnet_nngp, gaussnet_ntk, patch_features, relu_nngp,
                             relu_ntk, rescaled)
from mfarray.kernels.spec import INPUT_KINDS, kernel

X = mf.fermat_quintic()


@pytest.fixture(scope="module")
def z(quintic_points):
    return quintic_points.z.values[:120]


@pytest.fixture(scope="module")
def lazy_z():
    """300 lazily sampled quintic points in chunks of 100, and the same points in memory."""
    zd = mf.sample_points(X, 300, seed=0, chunk_size=100)["z"].data
    assert isinstance(zd, da.Array) and zd.numblocks[0] == 3
    return zd, zd.compute()


class Spy:
    """A rescaling h(x) = 1 that records the shape and dtype of every argument."""

    def __init__(self):
        self.seen = []

    def __call__(self, x):
        self.seen.append((tuple(x.shape), np.dtype(x.dtype)))
        return np.ones(x.shape[0])


# ----------------------------------------------------------------------------- the public kernels
@pytest.mark.parametrize("k, inputs, pairwise, symmetric", [
    (gaussian_fs, "points", True, True),
    (delta, "points", False, False),
    (relu_ntk, "features", True, True),
    (relu_nngp, "features", True, True),
    (cosine_ntk, "features", True, True),
    (gaussnet_nngp, "features", True, True),
    (gaussnet_ntk, "features", True, True),
])
def test_public_kernels_are_specs(k, inputs, pairwise, symmetric):
    assert isinstance(k, Kernel) and as_kernel(k) is k
    assert (k.inputs, k.pairwise, k.symmetric, k.opaque) == (inputs, pairwise, symmetric, False)
    assert k.inputs in INPUT_KINDS and k.hyper == {}
    assert not hasattr(k.fn, "input_kind") and not hasattr(k.fn, "pairwise")
    assert k.__doc__ and "(n1, n2)" in k.__doc__  # the formula's docstring survives


def test_direct_calls_work_as_before(z):
    x = patch_features(z)
    assert np.array_equal(relu_ntk(x), relu_ntk(x, x))
    assert np.array_equal(relu_ntk(x, depth=2, sigma_w=1.5), relu_ntk(x, x, depth=2, sigma_w=1.5))
    assert np.array_equal(relu_ntk(x1=x[:5], x2=x, depth=2), relu_ntk(x[:5], x, depth=2))
    assert np.array_equal(gaussian_fs(z1=z[:5], z2=z, sigma=0.1), gaussian_fs(z[:5], z, sigma=0.1))
    K = gaussian_fs(z, z, sigma=0.1, squared=True)
    assert K.shape == (len(z),) * 2 and np.allclose(np.diag(K), 1.0)
    assert np.array_equal(functools.partial(gaussian_fs, sigma=0.1, squared=True)(z, z), K)
    with pytest.raises(TypeError, match="positional"):
        relu_ntk(x, x, 2)


def test_partials_nested_partials_and_binds_are_one_spec():
    k = as_kernel(functools.partial(functools.partial(gaussian_fs, sigma=0.3), squared=True))
    assert k == gaussian_fs.bind(sigma=0.3, squared=True) == gaussian_fs.bind(sigma=0.3).bind(squared=True)
    assert (k.inputs, dict(k.hyper)) == ("points", {"sigma": 0.3, "squared": True})
    # a partial of a bound spec, and of a partial holding a spec
    d = as_kernel(functools.partial(functools.partial(delta)))
    assert (d.inputs, d.pairwise, d.symmetric) == ("points", False, False)
    assert hash(k) == hash(gaussian_fs.bind(squared=True, sigma=0.3))
    with pytest.raises(TypeError, match="keyword"):
        as_kernel(functools.partial(gaussian_fs, 1.0))


def test_metadata_survives_rescaled_partials(z):
    h = det_metric_rescaling(X)
    for k in (functools.partial(gaussian_fs, sigma=0.3),
              functools.partial(functools.partial(gaussian_fs, sigma=0.3), squared=True)):
        r = as_kernel(rescaled(k, h))
        assert isinstance(rescaled(k, h), Kernel)
        assert (r.inputs, r.pairwise, r.symmetric, r.opaque) == ("points", True, True, False)
        assert dict(r.hyper) == dict(as_kernel(k).hyper)
        assert [f["name"] for f in r.describe()["factors"]] == ["det_metric_rescaling"]
        hz = h(z)
        np.testing.assert_allclose(r(z, z), hz[:, None] * as_kernel(k)(z, z) * hz[None, :], rtol=1e-14)
    r = as_kernel(rescaled(functools.partial(delta), h))
    assert (r.inputs, r.pairwise, r.symmetric) == ("points", False, False)
    # a partial of a rescaled spec keeps the factor and binds the keyword
    r2 = as_kernel(functools.partial(rescaled(gaussian_fs, h), sigma=0.3))
    assert len(r2.factors) == 1 and dict(r2.hyper) == {"sigma": 0.3}


def test_rescaled_partial_is_fed_points(z):
    """The dispatcher (the flows' kernel_inputs) feeds a rescaled FS kernel points z, complex
    (n, n+1), and both its factors see them too."""
    from mfarray.flows.frozen import kernel_inputs

    spy = Spy()
    k = rescaled(functools.partial(gaussian_fs, sigma=0.3), spy)
    x = kernel_inputs(k, z)
    K = k(x, x[:7])
    assert K.shape == (len(z), 7)
    assert spy.seen == [((len(z), 5), np.dtype(complex)), ((7, 5), np.dtype(complex))]
    spy2 = Spy()
    k2 = rescaled(functools.partial(gaussian_fs, sigma=0.3), Rescaling(spy2, inputs="points"))
    k2(kernel_inputs(k2, z), z)
    assert {s for s in spy2.seen} == {((len(z), 5), np.dtype(complex))}


def test_feature_kernels_refuse_a_rescaling_on_points(z):
    h = det_metric_rescaling(X)
    assert isinstance(h, Rescaling) and (h.inputs, h.name) == ("points", "det_metric_rescaling")
    for k in (relu_ntk, functools.partial(relu_ntk, depth=2), cosine_ntk.bind(sigma_w=1.0)):
        with pytest.raises(ValueError, match="features.*points|points.*features"):
            rescaled(k, h)
    # a plain callable rescaling is taken to act on the kernel's own inputs
    x = patch_features(z)
    r = rescaled(functools.partial(relu_ntk, depth=1), lambda x: 1.0 + x[:, 0] ** 2)
    assert r.inputs == "features"
    f = 1.0 + x[:, 0] ** 2
    np.testing.assert_allclose(r(x, x), f[:, None] * relu_ntk(x, x) * f[None, :], rtol=1e-14)
    with pytest.raises(TypeError, match="callables"):
        rescaled(gaussian_fs, 3.0)


def test_user_closure_wrapped_once_then_bound_and_rescaled(z):
    def make(sigma):
        def fs(a, b, *, squared=False):
            return gaussian_fs(a, b, sigma=sigma, squared=squared)
        return fs

    k = Kernel(make(0.3), inputs="points")
    assert (k.inputs, k.opaque) == ("points", False)
    bound = as_kernel(functools.partial(k, squared=True))
    assert (bound.inputs, dict(bound.hyper)) == ("points", {"squared": True})
    h = det_metric_rescaling(X)
    r = rescaled(functools.partial(k, squared=True), h)
    assert (r.inputs, dict(r.hyper), len(r.factors)) == ("points", {"squared": True}, 1)
    hz = h(z)
    np.testing.assert_allclose(r(z, z), hz[:, None] * gaussian_fs(z, z, sigma=0.3, squared=True) * hz[None, :],
                               rtol=1e-14)
    with pytest.raises(TypeError, match="sigma"):
        k.bind(sigma=0.3)  # the closure's captured width is not a keyword


def test_describe_tells_closures_apart_only_by_name_or_hyper():
    """Opaque callables (and closures differing only in what they capture) cannot be told apart
    by describe(): same qualified name, no hyper-parameters.  Give them a name or make the
    hyper-parameter a keyword (issue 9 will add fingerprints of captured values)."""

    def make(sigma):
        return lambda a, b: gaussian_fs(a, b, sigma=sigma)

    c1, c2 = make(0.3), make(0.5)
    assert Kernel(c1, inputs="points").describe() == Kernel(c2, inputs="points").describe()
    assert as_kernel(c1).describe() == as_kernel(c2).describe()
    assert Kernel(c1, inputs="points", name="fs_0.3").describe() != \
        Kernel(c2, inputs="points", name="fs_0.5").describe()

    def fs(a, b, *, sigma):
        return gaussian_fs(a, b, sigma=sigma)

    k = Kernel(fs, inputs="points")
    d3, d5 = k.bind(sigma=0.3).describe(), k.bind(sigma=0.5).describe()
    assert d3 != d5 and d3["hyper"] == {"sigma": 0.3}
    json.dumps(d3)
    assert as_kernel(lambda a, b: a @ b.T).opaque is True
    plain = as_kernel(functools.partial(lambda a, b, s=1: s * a @ b.T, s=2))
    assert plain.opaque is True and plain.describe()["hyper"] == {"s": 2}
    assert plain(np.eye(2), np.eye(2))[0, 0] == 2
    assert as_kernel(functools.partial(lambda s, a, b: s * a @ b.T, 2)).opaque is True
    d = gaussian_fs.bind(sigma=np.float32(0.3)).describe()
    assert d["name"] == "gaussian_fs" and d["inputs"] == "points" and isinstance(d["hyper"]["sigma"], float)


def test_unknown_hyper_names_are_refused_at_bind_time():
    with pytest.raises(TypeError, match="sgima"):
        gaussian_fs.bind(sgima=0.3)
    with pytest.raises(TypeError, match="sgima"):
        as_kernel(functools.partial(gaussian_fs, sgima=0.3))
    with pytest.raises(TypeError, match="dpeth"):
        as_kernel(functools.partial(functools.partial(relu_ntk, depth=1), dpeth=2))
    with pytest.raises(TypeError, match="x2"):
        relu_ntk.bind(x2=None)  # the inputs are not hyper-parameters


def test_sigma_accepts_numpy_scalars_and_refuses_bool_nan_and_strings(z):
    K32 = gaussian_fs(z, z, sigma=np.float32(0.3))
    K = gaussian_fs(z, z, sigma=0.3)
    assert K32.dtype == np.float64
    np.testing.assert_allclose(K32, K, rtol=4 * float(np.finfo(np.float32).eps))
    assert np.array_equal(gaussian_fs(z, z, sigma=np.float64(0.3)), K)
    assert np.array_equal(gaussian_fs(z, z, sigma=np.int64(1)), gaussian_fs(z, z, sigma=1.0))
    assert np.array_equal(functools.partial(gaussian_fs, sigma=np.float32(0.3), squared=True)(z, z),
                          gaussian_fs(z, z, sigma=float(np.float32(0.3)), squared=True))
    for bad in (True, np.bool_(True), float("nan"), np.float32("nan"), np.inf, "0.3", None, 0.0, -1):
        with pytest.raises((TypeError, ValueError), match="sigma"):
            gaussian_fs(z, z, sigma=bad)


def test_patch_features_on_dask_is_lazy_and_equal(lazy_z):
    zd, z = lazy_z
    x = patch_features(zd)
    assert isinstance(x, da.Array) and x.shape == (300, 10) and x.dtype == np.float64
    assert x.numblocks == (3, 1)
    np.testing.assert_array_equal(x.compute(), patch_features(z))
    # an ambient axis in several chunks is rechunked
    np.testing.assert_array_equal(patch_features(da.from_array(z, chunks=(70, 2))).compute(),
                                  patch_features(z))


def test_det_metric_rescaling_on_dask_is_lazy_and_equal(lazy_z):
    zd, z = lazy_z
    h = det_metric_rescaling(X)
    hd = h(zd)
    assert isinstance(hd, da.Array) and hd.shape == (300,) and hd.dtype == np.float64
    np.testing.assert_array_equal(hd.compute(), h(z))
    # and through a rescaled FS kernel: lazy in, lazy out
    k = rescaled(functools.partial(gaussian_fs, sigma=0.3, method="entrywise"), h)
    Kd = k(zd, zd[:50])
    assert isinstance(Kd, da.Array)
    np.testing.assert_allclose(Kd.compute(), k(z, z[:50]), rtol=1e-14, atol=0)


def test_a_non_finite_rescaling_is_refused(z):
    k = rescaled(gaussian_fs.bind(sigma=0.3), Rescaling(lambda x: np.full(x.shape[0], np.nan), inputs="points"))
    with pytest.raises(ValueError, match="not finite"):
        k(z, z)
    with pytest.raises(ValueError, match="not finite"):
        k(da.from_array(z, chunks=(40, 5)), z).compute()


def test_specs_pickle_by_reference():
    for k in (gaussian_fs, gaussian_fs.bind(sigma=0.3, squared=True), delta, relu_ntk.bind(depth=2)):
        k2 = pickle.loads(pickle.dumps(k))
        assert k2 == k and k2.fn is k.fn


def test_kernel_decorator_and_refusals():
    @kernel("points", symmetric=False, name="mine")
    def mine(a, b, *, s=1.0):
        """My kernel, (n1, n2)."""
        return s * np.ones((a.shape[0], b.shape[0]))

    assert (mine.name, mine.inputs, mine.symmetric, mine.__doc__) == ("mine", "points", False,
                                                                      "My kernel, (n1, n2).")
    assert mine.bind(s=2.0)(np.zeros((2, 3)), np.zeros((4, 3)))[0, 0] == 2.0
    with pytest.raises(ValueError, match="inputs"):
        Kernel(mine.fn, inputs="z")
    with pytest.raises(TypeError, match="callable"):
        as_kernel(3.0)


def test_kernel_named_is_the_one_lookup_by_name():
    """Presets, the noise study and tuning find kernels by name through kernel_named: the spec
    itself, or a ValueError naming the argument and the choices."""
    from mfarray.experiments.presets import Preset
    from mfarray.kernels import kernel_named

    assert kernel_named("gaussian_fs") is mf.kernels.gaussian_fs
    with pytest.raises(ValueError, match=r"Preset kernel must name a kernel of mfarray.kernels, one of \[.*'relu_ntk'"):
        Preset("no_such_kernel").spec()
    with pytest.raises(ValueError, match="must name a kernel"):
        kernel_named("as_kernel")  # a function of the package, not a kernel


def test_records_tell_partials_and_dtypes_apart():
    """Kernel(functools.partial(f, s=...)) was recorded as 'functools.partial' with no
    hyper-parameters, so predict accepted another partial (another s, another f) as the flow's
    kernel; a dtype bound as np.float32 was recorded as its repr, which predict could not rebuild."""
    import functools
    import json

    import numpy as np

    from mfarray.kernels import Kernel, gaussian_fs

    def gauss(z1, z2, *, s):
        return gaussian_fs(z1, z2, sigma=s, squared=True)

    def other(z1, z2, *, s):
        return gaussian_fs(z1, z2, sigma=s, squared=False)

    a, b, c = (Kernel(functools.partial(f, s=s), inputs="points") for f, s in ((gauss, 0.3), (gauss, 0.6), (other, 0.3)))
    records = [json.dumps(k.describe(), sort_keys=True) for k in (a, b, c)]
    assert len(set(records)) == 3, records
    assert "gauss" in a.describe()["function"] and "0.3" in a.describe()["function"]
    for dt in (np.float32, np.dtype("float32"), "float32"):
        assert gaussian_fs.bind(dtype=dt).describe()["hyper"]["dtype"] == "float32"
