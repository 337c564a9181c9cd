"""Graph networks: the normalised adjacency, the GCN's symmetries, the karate club and
random-graph datasets, learning on both, the graph figure, and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml

from runyard import tasks
from runyard.checks import check_model_fits
from runyard.config import Experiment
from runyard.data import dataset_info, dataset_params, graph_format, graphs, karate
from runyard.data.splits import Splits
from runyard.models import build_model, check_model_spec
from runyard.models.components.gcn import normalized_adjacency
from tests.conftest import assert_one_line_config_error, files_under, one_line_error, runyard_cli
from tests.learning import untrained_vs_trained

REPO = Path(__file__).resolve().parents[2]
KARATE, GRAPHS = dataset_info("karate"), dataset_info("graphs")


def pipeline(name: str) -> dict:
    return yaml.safe_load((REPO / "pipelines" / f"{name}.yaml").read_text())


def packed(edges: list[tuple[int, int]], n: int, max_nodes: int, features: int = 3, query=None) -> np.ndarray:
    adjacency = np.zeros((n, n), dtype=np.float32)
    for i, j in edges:
        adjacency[i, j] = adjacency[j, i] = 1
    feats = np.random.default_rng(n).standard_normal((n, features)).astype(np.float32)
    return graph_format.pack(adjacency, feats, max_nodes, query=query)


def permute(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The same graphs with their N node slots (padding included) reordered by ``perm``."""
    n = x.shape[1]
    rows = x[:, perm]
    return torch.cat([rows[..., :n][..., perm], rows[..., n:]], -1)


@pytest.fixture(scope="module")
def small_graphs() -> Splits:
    return graphs.build(graphs.Args(graphs_per_class=30), seed=0)


# --------------------------------------------------------------------------- normalised adjacency


def test_normalized_adjacency_of_a_path_by_hand():
    """Path 0-1-2 padded to 4 slots: A + I has degrees 2, 3, 2; slot 3 is padding."""
    x = torch.from_numpy(packed([(0, 1), (1, 2)], n=3, max_nodes=4))[None]
    adjacency, _, mask, _ = graph_format.unpack(x)
    a_hat = normalized_adjacency(adjacency, mask)[0]
    r6 = 1 / math.sqrt(6)
    expected = torch.tensor([[1 / 2, r6, 0, 0], [r6, 1 / 3, r6, 0], [0, r6, 1 / 2, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(a_hat, expected)


def test_normalized_adjacency_properties_on_generated_graphs(small_graphs):
    x = torch.from_numpy(small_graphs.x_train[:20])
    adjacency, _, mask, _ = graph_format.unpack(x)
    a_hat = normalized_adjacency(adjacency, mask)
    torch.testing.assert_close(a_hat, a_hat.transpose(1, 2))  # symmetric
    d_tilde = adjacency.sum(-1) + mask  # degree + self loop
    real = mask > 0
    # Self loops on real nodes only: diagonal 1 / (d + 1); padding rows and columns all zero.
    torch.testing.assert_close(torch.diagonal(a_hat, dim1=1, dim2=2)[real], 1 / d_tilde[real])
    assert (a_hat[~real] == 0).all() and (a_hat.transpose(1, 2)[~real] == 0).all()
    # Entries are 1 / sqrt(d_i d_j) on edges, and sqrt(d~) is an eigenvector of eigenvalue 1,
    # the largest: propagation never blows features up.
    edge = (adjacency > 0) & real[:, :, None]
    outer = (d_tilde[:, :, None] * d_tilde[:, None, :]).rsqrt()
    torch.testing.assert_close(a_hat[edge], outer[edge])
    v = d_tilde.sqrt()
    torch.testing.assert_close(a_hat @ v[..., None], v[..., None])
    assert torch.linalg.eigvalsh(a_hat).max() <= 1 + 1e-5


# --------------------------------------------------------------------------- symmetries


def test_gcn_layers_are_permutation_equivariant(small_graphs):
    torch.manual_seed(0)
    net = build_model({"name": "gcn", "hidden": [8, 8], "batch_norm": True}, GRAPHS.input_shape, 3).eval()
    x = torch.from_numpy(small_graphs.x_train[:6])
    perm = torch.randperm(x.shape[1])  # mixes padding slots in among the real nodes
    with torch.no_grad():
        h, mask, _ = net.embed(x)
        h_perm, mask_perm, _ = net.embed(permute(x, perm))
    torch.testing.assert_close(h_perm, h[:, perm])
    torch.testing.assert_close(mask_perm, mask[:, perm])


@pytest.mark.parametrize("name", ["gcn", "graph_mlp"])
@pytest.mark.parametrize("pooling", ["mean", "sum", "max"])
def test_graph_readout_is_permutation_invariant(small_graphs, name, pooling):
    torch.manual_seed(0)
    net = build_model({"name": name, "hidden": [8, 8], "pooling": pooling}, GRAPHS.input_shape, 3).eval()
    x = torch.from_numpy(small_graphs.x_val[:6])
    with torch.no_grad():
        out = net(x)
        for seed in range(3):
            perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(seed))
            torch.testing.assert_close(net(permute(x, perm)), out)


def test_node_readout_follows_the_queried_node():
    torch.manual_seed(0)
    net = build_model({"name": "gcn"}, KARATE.input_shape, 2).eval()
    s = karate.build(karate.Args(), seed=0)
    x = torch.from_numpy(s.x_test[:5])
    perm = torch.randperm(karate.NODES)
    with torch.no_grad():
        out = net(x)
        torch.testing.assert_close(net(permute(x, perm)), out)  # renaming nodes changes nothing
        h, _, _ = net.embed(x)
    # Each output is the head applied to the marked node's embedding.
    nodes = torch.from_numpy(graph_format.query_nodes(s.x_test[:5]))
    torch.testing.assert_close(out, net.head(h[torch.arange(5), nodes]))
    assert len({tuple(np.round(row, 5)) for row in out.numpy()}) == 5


def test_padding_does_not_change_the_output():
    """The same graph padded to 12 or to 32 slots gives the same output (weights do not depend on N)."""
    torch.manual_seed(0)
    net = build_model({"name": "gcn", "hidden": [8, 8], "pooling": "max"}, (32, 32 + 3 + 2), 3).eval()
    edges = [(0, 1), (1, 2), (2, 3), (3, 0), (3, 4), (4, 5), (5, 6)]
    with torch.no_grad():
        small = net(torch.from_numpy(packed(edges, 7, max_nodes=12))[None])
        large = net(torch.from_numpy(packed(edges, 7, max_nodes=32))[None])
    torch.testing.assert_close(small, large)


def test_graph_mlp_ignores_edges_and_the_gcn_does_not():
    edges = [(0, 1), (1, 2), (2, 3), (3, 4)]
    x = torch.from_numpy(np.stack([packed(edges, 5, 8), packed(edges[:1], 5, 8)]))
    for name, same in (("graph_mlp", True), ("gcn", False)):
        torch.manual_seed(0)
        net = build_model({"name": name, "hidden": [8]}, (8, 8 + 3 + 2), 3).eval()
        with torch.no_grad():
            out = net(x)
        assert torch.allclose(out[0], out[1]) == same, name


def test_masked_batch_norm_is_batch_norm_over_real_nodes():
    from runyard.models.components.gcn import MaskedBatchNorm

    torch.manual_seed(0)
    h, mask = torch.randn(4, 6, 5), (torch.rand(4, 6) > 0.3).float()
    ours, reference, real = MaskedBatchNorm(5), torch.nn.BatchNorm1d(5), mask > 0
    for _ in range(3):
        out = ours(h, mask)
        torch.testing.assert_close(out[real], reference(h[real]))
        assert (out[~real] == 0).all()
    torch.testing.assert_close(ours.running_var, reference.running_var)
    ours.eval(), reference.eval()
    torch.testing.assert_close(ours(h, mask)[real], reference(h[real]))


def test_graph_models_export_for_mlflow(small_graphs):
    """MLflow logs models with torch.export: no data-dependent shapes allowed."""
    net = build_model({"name": "gcn", "hidden": [8], "batch_norm": True, "pooling": "max"}, GRAPHS.input_shape, 3)
    x = torch.from_numpy(small_graphs.x_test[:5])
    program = torch.export.export(net.eval(), (x,))
    torch.testing.assert_close(program.module()(x), net(x))


def test_gcn_and_graph_mlp_have_the_same_parameters():
    spec = {"hidden": [32, 32, 32], "batch_norm": True}
    gcn = build_model({"name": "gcn", **spec}, GRAPHS.input_shape, 3)
    mlp = build_model({"name": "graph_mlp", **spec}, GRAPHS.input_shape, 3)
    assert [p.shape for p in gcn.parameters()] == [p.shape for p in mlp.parameters()]


# --------------------------------------------------------------------------- karate club


def test_karate_graph():
    adjacency, labels = karate.graph()
    assert adjacency.shape == (34, 34) and adjacency.dtype == np.float32
    assert set(np.unique(adjacency)) == {0.0, 1.0}  # unweighted
    np.testing.assert_array_equal(adjacency, adjacency.T)
    assert np.trace(adjacency) == 0 and adjacency.sum() == 2 * 78
    assert np.bincount(labels).tolist() == [17, 17]
    assert labels[0] == 0 and labels[33] == 1  # Mr. Hi and the officer lead their clubs


@pytest.mark.parametrize("labels_per_class,val_nodes", [(1, 10), (2, 10), (4, 6)])
def test_karate_splits_are_disjoint_and_cover_the_club(labels_per_class, val_nodes):
    args = karate.Args(labels_per_class=labels_per_class, val_nodes=val_nodes)
    s = karate.build(args, seed=0)
    nodes = {split: set(graph_format.query_nodes(getattr(s, f"x_{split}")).tolist())
             for split in ("train", "val", "test")}
    assert s.sizes() == {"train": 2 * labels_per_class, "val": val_nodes, "test": 34 - 2 * labels_per_class - val_nodes}
    assert all(len(v) == s.sizes()[k] for k, v in nodes.items())  # one sample per node
    assert nodes["train"].isdisjoint(nodes["val"]) and nodes["val"].isdisjoint(nodes["test"])
    assert nodes["train"].isdisjoint(nodes["test"])
    assert nodes["train"] | nodes["val"] | nodes["test"] == set(range(34))
    assert np.bincount(s.y_train).tolist() == [labels_per_class] * 2
    assert abs(np.bincount(s.y_val, minlength=2)[0] - val_nodes / 2) <= 0.5  # stratified
    _, labels = karate.graph()
    for split in ("train", "val", "test"):  # each sample's label is its node's club
        x, y = getattr(s, f"x_{split}"), getattr(s, f"y_{split}")
        np.testing.assert_array_equal(y, labels[graph_format.query_nodes(x)])


def test_karate_samples_carry_the_whole_graph():
    s = karate.build(karate.Args(), seed=0)
    adjacency, _ = karate.graph()
    x = np.concatenate([s.x_train, s.x_val, s.x_test])
    assert x.shape == (34, *KARATE.input_shape) and x.dtype == np.float32
    n, f = graph_format.layout(KARATE.input_shape)
    assert (n, f) == (34, 34)
    assert (x[:, :, :n] == adjacency).all() and (x[:, :, n:n + f] == np.eye(34)).all()
    assert (x[:, :, n + f] == 1).all() and (x[:, :, n + f + 1].sum(1) == 1).all()
    degree = karate.build(karate.Args(features="degree"), seed=0).x_train[0, :, n:n + f]
    np.testing.assert_array_equal(degree.argmax(1), adjacency.sum(1))


def test_karate_is_deterministic_per_seed():
    a, b, c = (karate.build(karate.Args(), seed=s) for s in (0, 0, 1))
    for key, arr in a.arrays().items():
        np.testing.assert_array_equal(arr, b.arrays()[key])
    assert not np.array_equal(graph_format.query_nodes(a.x_train), graph_format.query_nodes(c.x_train))


# --------------------------------------------------------------------------- random graph families


def test_graphs_sizes_balance_and_validity(small_graphs):
    s = small_graphs
    assert s.sizes() == {"train": 54, "val": 18, "test": 18}
    n, f = graph_format.layout(GRAPHS.input_shape)
    for split in ("train", "val", "test"):
        x, y = getattr(s, f"x_{split}"), getattr(s, f"y_{split}")
        assert x.shape[1:] == GRAPHS.input_shape and x.dtype == np.float32 and y.dtype == np.int64
        assert np.bincount(y).tolist() == [len(y) // 3] * 3  # stratified
        adjacency, mask = x[..., :n], x[..., n + f]
        np.testing.assert_array_equal(adjacency, adjacency.transpose(0, 2, 1))
        assert np.trace(adjacency, axis1=1, axis2=2).max() == 0
        sizes = mask.sum(1).astype(int)
        assert sizes.min() >= 16 and sizes.max() <= 32
        assert (mask == (np.arange(n) < sizes[:, None])).all()  # real nodes first, then padding
        assert (x[..., n + f + 1] == 0).all()  # graph-level samples mark no node
        assert (x[..., n:n + f] == (mask[..., None] * np.eye(f)[0])).all()  # constant features


def test_graphs_families_share_mean_degree_but_not_structure(small_graphs):
    s = small_graphs
    n, f = graph_format.layout(GRAPHS.input_shape)
    x = np.concatenate([s.x_train, s.x_val, s.x_test])
    y = np.concatenate([s.y_train, s.y_val, s.y_test])
    degree = x[..., :n].sum(-1)
    mask = x[..., n + f] > 0
    for c in range(3):
        mean_degree = degree[y == c][mask[y == c]].mean()
        assert 3.4 < mean_degree < 4.3, (graphs.FAMILIES[c], mean_degree)
    # Barabási–Albert grows hubs, Watts–Strogatz stays close to its ring lattice.
    max_degree = [degree[y == c].max(1).mean() for c in range(3)]
    assert max_degree[1] > max_degree[0] > max_degree[2]


def test_graphs_deterministic_disjoint_and_seeded(small_graphs):
    again = graphs.build(graphs.Args(graphs_per_class=30), seed=0)
    for key, arr in small_graphs.arrays().items():
        np.testing.assert_array_equal(arr, again.arrays()[key])
    seen = [{row.tobytes() for row in getattr(small_graphs, f"x_{s}")} for s in ("train", "val", "test")]
    assert sum(map(len, seen)) == 90 and len(set.union(*seen)) == 90  # no graph in two splits
    other = graphs.build(graphs.Args(graphs_per_class=30), seed=1)
    assert not np.array_equal(other.x_train, small_graphs.x_train)


def test_graphs_degree_features():
    s = graphs.build(graphs.Args(graphs_per_class=10, features="degree"), seed=0)
    n, f = graph_format.layout(GRAPHS.input_shape)
    x = s.x_train
    degree = np.minimum(x[..., :n].sum(-1), f - 1)
    mask = x[..., n + f] > 0
    np.testing.assert_array_equal(x[..., n:n + f].argmax(-1)[mask], degree[mask])
    assert (x[..., n:n + f].sum(-1) == mask).all()


@pytest.mark.parametrize("name", ["karate", "graphs"])
def test_prepare_twice_is_byte_identical(project, name):
    from runyard.commands.prepare import prepare

    params = yaml.safe_load(project.params_file.read_text())
    params["catalogue"]["datasets"]["graphs"] = {"graphs_per_class": 20}
    project.params_file.write_text(yaml.safe_dump(params))
    first = {p.name: p.read_bytes() for p in prepare(project, name).iterdir()}
    second = {p.name: p.read_bytes() for p in prepare(project, name).iterdir()}
    assert first == second and len(first) == 7


# --------------------------------------------------------------------------- learning


def train(dataset: str, splits: Splits, model: dict, recipe: dict) -> tuple[float, float, pl.LightningModule]:
    """Val accuracy untrained and trained (plain in-process Lightning, no Ray), and the system."""
    exp = Experiment(name="t", dataset=dataset, model=model, recipe=recipe)
    before, after, learned = untrained_vs_trained(exp, dataset_info(dataset), splits, "val/acc")
    return before, after, learned.system


def test_gcn_learns_karate_and_draws_the_graph(tmp_path, one_thread):
    """The shipped pipeline on half its epochs (100), 2 labelled members per club. Accuracy
    over the 30 unlabelled members: trained 0.90-0.93 with model seeds 0-3; untrained
    0.33-0.77 with seeds 0-7 (an untrained GCN already smooths over the club's two
    communities; its random head then names them right or wrong). Then the node
    classifier's evaluator scores the test nodes and draws the club coloured by
    predicted class."""
    raw = pipeline("karate_gcn")
    s = karate.build(karate.Args(), seed=0)
    x_unlabelled, y_unlabelled = np.concatenate([s.x_val, s.x_test]), np.concatenate([s.y_val, s.y_test])
    nets = {}

    def accuracy(net) -> float:
        with torch.no_grad():
            return float((net.eval()(torch.from_numpy(x_unlabelled)).argmax(1).numpy() == y_unlabelled).mean())

    pl.seed_everything(0, verbose=False)
    nets["untrained"] = build_model(raw["model"], KARATE.input_shape, 2)
    _, val_acc, system = train("karate", s, raw["model"], {**raw["recipe"], "epochs": 100})
    nets["trained"] = system.net
    acc = {k: accuracy(net) for k, net in nets.items()}

    def predict(x):
        with torch.no_grad():
            return nets["trained"].eval()(torch.from_numpy(x)).numpy()

    values = tasks.get("node_classification").evaluate("karate_gcn", KARATE, s, predict(s.x_test), tmp_path, predict)
    print(f"karate: unlabelled-node acc {acc}; val {val_acc:.2f}, test {values['test/acc']:.2f}")
    assert acc["trained"] >= 0.85 and acc["trained"] > acc["untrained"]
    assert val_acc >= 0.8 and values["test/acc"] >= 0.8
    assert {p.name for p in tmp_path.iterdir()} == {"confusion.png", "confusion.csv", "graph.png"}
    assert (tmp_path / "graph.png").stat().st_size > 10_000


def test_gcn_learns_graph_families_and_the_edge_blind_baseline_cannot(one_thread):
    """Constant node features: only the edges tell the families apart. 20 epochs on 60
    graphs per family: GCN val 0.81 (model seeds 0-3: 0.81-0.94), the edge-blind
    graph_mlp exactly 1/3 (every graph looks the same to it), both 1/3 untrained."""
    s = graphs.build(graphs.Args(graphs_per_class=60), seed=0)
    recipe = {**pipeline("graphs_gcn")["recipe"], "epochs": 20, "batch_size": 32}
    results = {}
    for name in ("graphs_gcn", "graphs_mlp"):
        results[name] = train("graphs", s, pipeline(name)["model"], recipe)[:2]
    print(f"graphs: val acc (untrained, trained) {results}")
    before, after = results["graphs_gcn"]
    assert after >= 0.7 and after > before + 0.2
    assert results["graphs_mlp"][1] < 0.45


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "dataset,raw,fragments",
    [
        ("karate", {"labels_per_class": 0}, ["datasets.karate: labels_per_class:", "greater than or equal to 1"]),
        ("karate", {"labels_per_class": 9}, ["labels_per_class:", "less than or equal to 8", "(got 9)"]),
        ("karate", {"features": "onehot"}, ["datasets.karate: features:", "'identity'", "'degree'", "'onehot'"]),
        ("karate", {"label": 2},
         ["datasets.karate: label: unknown key; allowed:", "labels_per_class", "val_nodes", "features"]),
        ("graphs", {"min_nodes": 20, "max_nodes": 10}, ["datasets.graphs: max_nodes: must be at least min_nodes (20)"]),
        ("graphs", {"max_nodes": 64}, ["datasets.graphs: max_nodes:", "less than or equal to 32"]),
        ("graphs", {"graphs_per_class": 10, "val_fraction": 0.49, "test_fraction": 0.49},
         ["datasets.graphs: test_fraction:", "no training graph"]),
        ("graphs", {"features": "identity"}, ["datasets.graphs: features:", "'constant'", "'degree'"]),
    ],
)
def test_bad_dataset_args_are_one_line(dataset, raw, fragments):
    where = f"params.yaml: datasets.{dataset}"
    assert_one_line_config_error(lambda: dataset_params(dataset, raw, where), fragments)


@pytest.mark.parametrize(
    "spec,fragments",
    [
        ({"name": "gcn", "hidden": []}, ["p.yaml: model: hidden:", "at least 1 item"]),
        ({"name": "gcn", "hidden": [16, 0]}, ["model: hidden.1:", "greater than 0"]),
        ({"name": "gcn", "pooling": "median"}, ["model: pooling:", "'mean'", "'sum'", "'max'", "'median'"]),
        ({"name": "gcn", "dropout": 1.0}, ["model: dropout:", "less than 1"]),
        ({"name": "graph_mlp", "edges": False},
         ["model: edges: unknown key; allowed:", "hidden", "pooling", "batch_norm", "init"]),
    ],
)
def test_bad_model_options_are_one_line(spec, fragments):
    assert_one_line_config_error(lambda: check_model_spec(spec, where="p.yaml: model"), fragments)


def test_gcn_on_non_graph_data_is_a_config_error():
    assert_one_line_config_error(
        lambda: check_model_fits({"name": "gcn"}, dataset_info("mnist1d"), "mnist1d", where="p.yaml: model"),
        ["p.yaml: model: gcn does not fit mnist1d inputs of shape (40,)", "packed graphs"],
    )


def test_cli_bad_graph_params_fail_in_one_line_before_any_work(project_dir):
    params = yaml.safe_load((project_dir / "params.yaml").read_text())
    params["catalogue"]["datasets"]["graphs"] = {"min_nodes": 24, "max_nodes": 20}
    (project_dir / "params.yaml").write_text(yaml.safe_dump(params))
    before = files_under(project_dir)
    line = one_line_error(runyard_cli("prepare", "graphs", cwd=project_dir))
    assert line == ("runyard: error: params.yaml: catalogue.datasets.graphs: max_nodes: "
                    "must be at least min_nodes (24) (got 20)")
    assert files_under(project_dir) == before
