"""``vosrt eval --pred DIR --gt DIR [--task TASK]``: score predictions against ground truth.

Tasks:

* ``semi-supervised`` (default): J, F and J&F of predicted palette PNGs, object ids as in the ground truth,
  and J and F recall and decay (:func:`vosrt.sdk.metrics.recall_and_decay`), as the DAVIS evaluation reports.
* ``unsupervised``: the DAVIS unsupervised protocol: predicted ids are proposals (up to 20 per sequence)
  matched one to one to the ground-truth objects (those of the first frame; later ones are named in a
  warning, not scored) to maximise J&F (``vosrt.sdk.instance_metrics``).
* ``vis``: YouTube-VIS video AP, AP50, AP75, AR1, AR10; ``--gt`` the annotation JSON, ``--pred`` the
  results JSON (the challenge's submission format).
* ``mots``: KITTI-MOTS HOTA, DetA, AssA, sMOTSA, MOTSA, IDF1 by trackeval; ``--gt`` and ``--pred`` folders
  of ``<sequence>.txt`` files in the KITTI-MOTS format. Only class ids 1 (car) and 2 (pedestrian) are
  scored: predicted rows of other ids are named in a warning, and predictions with neither are refused.

``vis`` and ``mots`` need ``pip install 'vosrt[eval]'`` (pycocotools, trackeval).

For the PNG tasks a folder is either one sequence (PNG files directly in it) or a set of sequences
(sub-folders of PNGs, as DAVIS ``Annotations/480p``; ``--sequences ImageSets/2017/val.txt`` scores the listed ones
only: a name a line, or a folder's path, or DAVIS 2016's frame-path pairs; ``#`` comment lines and a BOM left out);
``.png`` and ``.PNG`` are both PNGs. Objects are ids 1..K, K the largest of the first ground-truth frame, as
davis2017-evaluation reads them: an id of 1..K missing there is named in a warning (the protocol scores it as an
object), and ids beyond 254 (16-bit PNGs) are refused. Predictions are
matched to ground truth by sequence and file name (the suffix's case aside); a frame no object is scored on
(the first and last of the semi-supervised task, as davis2017-evaluation reads them) needs none; a sequence's frames are in
natural order (``frame2`` before ``frame10``). In the ground truth 255 is void beside object ids: background in the semi-supervised task, left out of J
and F in the unsupervised one (as davis2017-evaluation scores them); a sequence annotated only with 0 and 255 (DAVIS
2016's foreground masks) has 255 as its one object, scored as object 1 (a predicted 255 counts as 1 in the
semi-supervised task). In the semi-supervised task a sequence whose objects enter after its first frame (each
given to the tracker where first annotated) scores each object on the frames after that one
(:func:`vosrt.sdk.metrics.evaluate_by_appearance`). Prints a table (per object, per sequence, overall) and
writes it as CSV (``--csv``, default ``PRED/metrics.csv``; for ``vis``, whose PRED is a results file,
``results.metrics.csv`` beside it).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from vosrt.sdk.errors import UserError
from vosrt.sdk.masks import read_label_png
from vosrt.sdk.metrics import (RECALL_DECAY, VOID, UnknownObjectError, evaluate_by_appearance, evaluate_sequence,
                                first_frame_objects, foreground_truth, one_object, summarize)
from vosrt.sdk.video import IMAGE_SUFFIXES, frame_files, natural_key

TASKS = ("semi-supervised", "unsupervised", "vis", "mots")


def add_arguments(parser) -> None:
    """Arguments of ``vosrt eval``."""
    parser.add_argument("--pred", required=True, help="predicted masks: a sequence folder or a folder of them "
                        "(vis: results JSON; mots: folder of <sequence>.txt)")
    parser.add_argument("--gt", required=True, help="ground-truth masks, laid out like --pred "
                        "(vis: annotation JSON; mots: folder of <sequence>.txt)")
    parser.add_argument("--task", choices=TASKS, default="semi-supervised",
                        help="protocol (default semi-supervised DAVIS; unsupervised, vis = YouTube-VIS AP, "
                        "mots = KITTI-MOTS HOTA)")
    parser.add_argument("--csv", default=None, help="CSV to write (default PRED/metrics.csv; vis: "
                                                         "results.json -> results.metrics.csv)")
    parser.add_argument("--all-frames", action="store_true",
                        help="score the first and last frames too (DAVIS semi-supervised skips them; a sequence "
                        "whose objects enter after its first frame is scored YouTube-VOS style, on every annotated "
                        "frame after each object's first, with or without this flag)")
    parser.add_argument("--sequences", metavar="FILE", default=None,
                        help="score only the sequences listed in FILE, one name a line, as DAVIS lists its splits "
                        "(e.g. DAVIS/ImageSets/2017/val.txt, with --gt DAVIS/Annotations/480p holding train and val); "
                        "default: every sequence of --gt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (scoring DAVIS's validation "
                        "set takes tens of seconds, the unsupervised task's 20 proposals minutes)")


def png_files(folder: Path) -> list[Path]:
    """The PNG files of ``folder`` in natural order, ``.png`` in any case (``.PNG`` too, as ``vosrt run`` reads the
    images of a folder by their suffix in any case), hidden ones left out (:func:`~vosrt.sdk.video.frame_files`);
    none for a folder that is not there."""
    if not folder.is_dir():
        return []
    return sorted(frame_files(folder, (".png",)), key=natural_key)


def _prediction_of(pred_dir: Path, gt_file: Path) -> Path:
    """The predicted PNG for ``gt_file``: the same name, or the same stem with ``.png`` in another case
    (``vosrt run`` writes ``.png`` for ground truth named ``.PNG``)."""
    exact = pred_dir / gt_file.name
    if exact.is_file():
        return exact
    same_stem = [p for p in png_files(pred_dir) if p.stem == gt_file.stem]
    return same_stem[0] if same_stem else exact


def sequences(root: Path, flag: str = "") -> dict[str, Path]:
    """Sequence name -> folder of PNGs under ``root`` (``root`` itself when it holds PNGs); ``flag`` (``--gt``,
    ``--pred``) names the argument in errors."""
    where = f"{flag} {root}".strip()
    if not root.is_dir():
        raise UserError(f"{where}: not a folder" + (" (it does not exist)" if not root.exists() else ""))
    # hidden folders are no sequences: a Jupyter .ipynb_checkpoints of PNG copies became one the predictions lacked
    found = {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".") and png_files(d)}
    if png_files(root):
        if found:
            raise UserError(f"{where}: holds PNG files and sub-folders of PNGs ({', '.join(list(found)[:3])}); is "
                            "it one sequence or a set of them? Move the stray PNGs out, or point at one sequence folder")
        return {root.name: root}
    if not found:
        deeper = _sequence_sets(root)
        hint = (f"; its sequence folders are in {deeper[0]}" + (f" (also: {', '.join(map(str, deeper[1:3]))})"
                                                                 if len(deeper) > 1 else "")
                + f": give {flag or 'that folder'} {deeper[0]}" if deeper else "")
        raise UserError(f"{where}: no PNG masks in it or in its sub-folders" + hint)
    return found


def _sequence_sets(root: Path, depth: int = 2) -> list[Path]:
    """Folders up to ``depth`` levels below ``root`` whose sub-folders hold PNGs: where a dataset's sequences are
    when ``root`` is its top folder (DAVIS/ -> DAVIS/Annotations/480p, as davis2017-evaluation is given the root)."""
    found, level = [], [root]
    try:
        for _ in range(depth):
            level = [d for folder in level for d in sorted(folder.iterdir()) if d.is_dir()]
            found += [d for d in level if any(png_files(s) for s in d.iterdir() if s.is_dir())]
    except OSError:
        pass   # an unreadable folder: the hint is left out, the error stands
    return found


def _single_prediction(pred_root: Path, name: str) -> Path:
    """The folder of predicted PNGs for the one ground-truth sequence ``name``: ``pred_root`` itself, or its
    sub-folder ``name`` when ``pred_root`` is a folder of sequences (``vosrt run --out`` for several)."""
    if not pred_root.is_dir():
        raise UserError(f"--pred {pred_root}: not a folder" + (" (it does not exist)" if not pred_root.exists() else ""))
    if not png_files(pred_root) and png_files(pred_root / name):
        return pred_root / name
    if not png_files(pred_root):
        raise UserError(f"--pred {pred_root}: no PNG masks in it (nor in {pred_root / name}, for --gt's sequence "
                        f"'{name}')")
    return pred_root


def read_sequence_list(path: Path) -> list[str]:
    """The sequence names of a list file (``--sequences``): one a line, as DAVIS 2017's ``ImageSets/2017/val.txt``;
    DAVIS 2016's ``ImageSets/480p/val.txt`` lines of frame paths give the folder of their first path."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()   # a BOM (Windows Notepad) is no part of a name
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--sequences {path}: cannot read it as a list of sequence names ({err})") from None
    names = [_listed_name(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise UserError(f"--sequences {path}: no sequence names in it (expected one a line, as in DAVIS's "
                        "ImageSets/2017/val.txt)")
    return list(dict.fromkeys(names))


def _listed_name(line: str) -> str:
    """The sequence a line of a list file names: DAVIS 2016's ``/JPEGImages/480p/bear/00000.jpg
    /Annotations/480p/bear/00000.png`` the folder of its frame (``bear``); a folder's path (``seqa/`` as ``ls -d */``
    writes it, ``DAVIS/Annotations/480p/seqa``) its last part; a bare name itself."""
    first = line.split()[0]
    if Path(first).suffix.lower() in IMAGE_SUFFIXES:
        return Path(first).parent.name
    return Path(line.strip().rstrip("/\\")).name or line.strip()


def _listed(gt_seqs: dict, gt_root: Path, names: list[str], list_file: Path) -> dict:
    """The sequences of ``gt_seqs`` named in ``names`` (``--sequences list_file``), in the ground truth's order."""
    absent = [n for n in names if n not in gt_seqs]
    if absent:
        raise UserError(f"--sequences {list_file}: {len(absent)} of its {len(names)} sequence(s) are not in --gt "
                        f"{gt_root} ({_some(absent)}; it has {len(gt_seqs)}: {_some(list(gt_seqs))}); give --gt the "
                        "folder of the listed split's annotations, or a list of its sequences")
    return {name: folder for name, folder in gt_seqs.items() if name in set(names)}


def _some(names: list, count: int = 3) -> str:
    return ", ".join(map(str, names[:count])) + (", ..." if len(names) > count else "")


def _split_lists(gt_root: Path, wanted: set) -> list[Path]:
    """DAVIS split lists (``ImageSets/*/*.txt`` of the dataset ``gt_root`` is in: ``DAVIS/Annotations/480p``)
    every sequence of which is in ``wanted``, the longest first."""
    found = []
    for top in (gt_root.parent.parent, gt_root.parent):
        for candidate in sorted(top.glob("ImageSets/*/*.txt")):
            try:
                names = read_sequence_list(candidate)
            except UserError:
                continue
            if set(names) <= wanted:
                found.append((len(names), candidate))
    return [path for _, path in sorted(found, key=lambda item: -item[0])]


def _check_predictions(pred_root: Path, gt_root: Path, gt_seqs: dict, pred_seqs: dict, command: list[str],
                       gt_frames: dict, skip_first_last: bool = True, unsupervised: bool = False) -> None:
    """UserError, before any scoring (minutes on a dataset), where predictions are missing: a sequence of the ground
    truth without its folder (all named at once, with the command that scores the predicted ones where a DAVIS split
    list names them), or a frame that is scored whatever the ground truth holds without its PNG: all but the first
    and last; the last too with ``--all-frames`` or in a sequence of two frames or less, and every frame in the
    unsupervised task. (Whether the first frame of a semi-supervised sequence scored with ``--all-frames`` and the
    last of one whose objects enter late are scored depends on their masks: checked where they are read.)"""
    import shlex

    same = [name for name in gt_seqs if name in pred_seqs and pred_seqs[name].resolve() == gt_seqs[name].resolve()]
    if same:   # the ground truth scored against itself: 1.000, without a word
        raise UserError(f"--pred {pred_root}: the predictions of {_some(same)} are --gt's own ground truth "
                        f"({gt_seqs[same[0]]}); give --pred the folder vosrt run --out wrote")
    missing = [name for name in gt_seqs if name not in pred_seqs]
    if missing:
        have = [name for name in gt_seqs if name in pred_seqs]
        message = (f"--pred {pred_root}: no predictions for {len(missing)} of the {len(gt_seqs)} sequence(s) of --gt "
                   f"{gt_root} ({_some(missing)}; expected a folder {pred_root / missing[0]} of PNGs and so on")
        if have:
            lists = _split_lists(gt_root, set(have))
            message += (f"). It has predictions for {len(have)} of them: to score only those, list them in a file, one "
                        "name a line, and give it with --sequences FILE")
            if lists:
                message += f"; DAVIS's {lists[0].name} lists predicted ones: `{shlex.join(command + ['--sequences', str(lists[0])])}`"
        else:
            message += f"; it has {len(pred_seqs)}: {_some(list(pred_seqs))})"
        raise UserError(message)
    absent = []
    for name, gt_files in gt_frames.items():
        # the frames unscored with objects entering late or without (which the masks decide): see above
        maybe = (_unscored_frames(len(gt_files), skip_first_last, unsupervised, entering=True)
                 | _unscored_frames(len(gt_files), skip_first_last, unsupervised, entering=False))
        predicted = [(_prediction_of(pred_seqs[name], f), f) for t, f in enumerate(gt_files) if t not in maybe]
        absent += [(pred_file, f) for pred_file, f in predicted if not pred_file.is_file()]
    if absent:
        pred_file, gt_file = absent[0]
        raise UserError(f"--pred: missing {pred_file} (ground truth has {gt_file})"
                        + (f" and {len(absent) - 1} more predicted PNG(s) of scored frames" if len(absent) > 1 else "")
                        + "; every ground-truth frame that is scored needs a predicted PNG of the same name")


def _unscored_frames(count: int, skip_first_last: bool, unsupervised: bool, entering: bool) -> set[int]:
    """The frames of a sequence of ``count`` that no object is scored on, which need no prediction (a missing one
    is read as empty), as davis2017-evaluation reads none for the first (given) and last frames of the
    semi-supervised task. ``entering``: objects first annotated after the first frame, each scored on the frames
    after the one that gives it."""
    if unsupervised:
        return set()
    if entering:
        return {0}
    return {0, count - 1} if skip_first_last and count > 2 else set()


def evaluate_folders(pred_root: Path, gt_root: Path, skip_first_last: bool = True, unsupervised: bool = False,
                     progress: bool = False, only: Path | None = None):
    """Score every ground-truth sequence (``only``: those a list file names, :func:`read_sequence_list`); returns
    the list of :class:`~vosrt.sdk.metrics.ObjectScore` (``unsupervised``: by the DAVIS unsupervised protocol, all
    frames scored). ``progress``: a bar on stderr over the ground-truth frames, advanced as each sequence is
    scored. Missing predictions are refused before any sequence is scored."""
    from vosrt.sdk.progress import Progress

    gt_seqs = sequences(gt_root, "--gt")
    if only is not None:
        gt_seqs = _listed(gt_seqs, gt_root, read_sequence_list(only), only)
    single = len(gt_seqs) == 1 and next(iter(gt_seqs.values())) == gt_root
    pred_seqs = {gt_root.name: _single_prediction(pred_root, gt_root.name)} if single else sequences(pred_root, "--pred")
    command = (["vosrt", "eval", "--pred", str(pred_root), "--gt", str(gt_root)]
               + (["--task", "unsupervised"] if unsupervised else []) + ([] if skip_first_last else ["--all-frames"]))
    # natural order (frame2 before frame10), as vosrt run reads a folder: it decides which frames are the first and
    # the last; DAVIS's zero-padded names sort the same either way
    gt_frames = {name: png_files(gt_dir) for name, gt_dir in gt_seqs.items()}
    _check_predictions(pred_root, gt_root, gt_seqs, pred_seqs, command, gt_frames, skip_first_last, unsupervised)
    # every frame is scored against every object (unsupervised: every proposal too), a few ms each at 480p: a
    # dataset takes from tens of seconds to minutes, which a bar shows instead of a silent wait
    bar = Progress(sum(map(len, gt_frames.values())), "frame", enabled=progress, desc="scoring")
    try:
        sequences_scored = _advancing(bar, gt_seqs, gt_frames)
        return _evaluate(gt_root, pred_seqs, skip_first_last, unsupervised, sequences_scored)
    finally:
        bar.close()


def _advancing(bar, gt_seqs: dict, gt_frames: dict):
    """(name, folder, PNG files) of each sequence of ``gt_seqs``, ``bar`` naming it while it is scored and advanced
    by its frames once it is (a sequence left out with a warning too)."""
    for name, gt_dir in gt_seqs.items():
        bar.update(0, postfix=name)
        yield name, gt_dir, gt_frames[name]
        bar.update(len(gt_frames[name]))


def _check_object_ids(gt_files: list, frame_ids: list[list[int]]) -> None:
    """UserError for ground-truth ids beyond 255 (a 16-bit PNG): the DAVIS protocols score objects 1..K, K the largest
    id of the first frame, so KITTI-MOTS's instance PNGs (class x 1000 + instance) made thousands of absent objects,
    each scored perfect against an empty prediction (an empty prediction scored 0.999), and minutes of scoring."""
    for gt_file, ids in zip(gt_files, frame_ids):
        large = [i for i in ids if i > VOID]
        if large:
            raise UserError(f"--gt {gt_file}: object id(s) {_some(large)} beyond 254 (a 16-bit PNG); the DAVIS "
                            f"protocols score objects 1..K of the first frame, so each id below the largest would "
                            f"count as an object. Number a sequence's objects 1, 2, ...; KITTI-MOTS's instance PNGs "
                            f"(class x 1000 + instance) are scored with --task mots on its instances_txt files")


def _warn_about_absent_ids(gt_dir: Path, first_file: Path, first_ids: list[int]) -> None:
    """A warning naming the ids of 1..K (K the largest id of the first ground-truth frame) that the frame does not
    hold: the DAVIS protocol scores them as objects, perfect where the prediction leaves them out too (as
    davis2017-evaluation does), which raises the mean without a word."""
    known, present = first_frame_objects(np.asarray(first_ids)), set(first_ids)
    absent = [i for i in range(1, known + 1) if i not in present]
    if absent:
        print(f"warning: {gt_dir}: object id(s) {_some(absent)} of 1..{known} are not in the "
              f"first ground-truth frame ({first_file.name}); the DAVIS protocol scores each as an object (as "
              f"davis2017-evaluation does), perfect wherever the prediction leaves it out too: number the objects "
              f"1, 2, ... without gaps for a mean over the real ones", file=sys.stderr)


def _evaluate(gt_root: Path, pred_seqs: dict, skip_first_last: bool, unsupervised: bool, advancing) -> list:
    """The scores of the sequences ``advancing`` yields (:func:`_advancing`), against their ``pred_seqs`` folders."""
    scores, binary, late = [], [], []
    for name, gt_dir, gt_files in advancing:
        gts = [read_label_png(gt_file) for gt_file in gt_files]
        foreground = foreground_truth(gts)
        if foreground:
            # DAVIS 2016's 0/255 masks: 255 is the one object (a tracker given such a mask writes it as 255)
            binary.append(name)
            gts = [one_object(gt) for gt in gts]
        frame_ids = [np.unique(gt).tolist() for gt in gts]   # each frame's ids, read once
        _check_object_ids(gt_files, frame_ids)
        annotated = {i for ids in frame_ids for i in ids}
        entering = set() if unsupervised else ({i for i in annotated if i and i != VOID} - set(frame_ids[0]))
        if gts and not entering:
            _warn_about_absent_ids(gt_dir, gt_files[0], frame_ids[0])
        unscored = _unscored_frames(len(gts), skip_first_last, unsupervised, bool(entering))
        preds = []
        for t, (gt_file, gt) in enumerate(zip(gt_files, gts)):
            pred_file = _prediction_of(pred_seqs[name], gt_file)
            if not pred_file.is_file():
                if t in unscored:
                    preds.append(np.zeros_like(gt))
                    continue
                raise UserError(f"--pred: missing {pred_file} (ground truth has {gt_file}); every ground-truth frame "
                                "that is scored needs a predicted PNG of the same name")
            pred = read_label_png(pred_file)
            if pred.shape != gt.shape:
                raise UserError(f"--pred {pred_file}: size {pred.shape[1]}x{pred.shape[0]} differs from the ground "
                                f"truth's {gt.shape[1]}x{gt.shape[0]} ({gt_file}; width x height); write the predictions "
                                "at the ground truth's resolution, or give --gt the annotations at theirs (DAVIS: "
                                "Annotations/480p or Annotations/Full-Resolution)")
            preds.append(one_object(pred) if foreground and not unsupervised else pred)
        if entering:
            # objects that enter later, given to the tracker where first annotated (vosrt run on a DAVIS-layout
            # sequence does so): each is scored on the frames after that one (the DAVIS protocol has none)
            late.append(name)
            try:
                scores.extend(evaluate_by_appearance(preds, gts, name))
            except UnknownObjectError as err:
                raise UserError(f"--pred {pred_seqs[name]}: {err}") from None
            continue
        if gts and first_frame_objects(gts[0]) == 0:
            # the DAVIS protocol's objects are those of the first annotated frame: none here
            print(f"warning: {gt_dir}: the first ground-truth frame ({gt_files[0].name}) has no object (255 is void), "
                  f"so sequence '{name}' is not scored", file=sys.stderr)
            continue
        if unsupervised:
            known = first_frame_objects(gts[0])
            unscored = sorted(i for i in annotated if known < i != VOID)
            if unscored:
                # the protocol's objects are 1..K of the first frame; later ones were left out without a word
                print(f"warning: {gt_dir}: object(s) {', '.join(map(str, unscored))} enter after the first "
                      f"ground-truth frame ({gt_files[0].name}, objects 1..{known}); the DAVIS unsupervised protocol "
                      f"scores the first frame's objects only, so they are not scored", file=sys.stderr)
        if unsupervised:
            from vosrt.sdk.instance_metrics import MAX_PROPOSALS
            top = max(int(pred.max(initial=0)) for pred in preds)
            if top > MAX_PROPOSALS:
                # davis2017-evaluation stops on such a sequence; the largest are kept here (instance_metrics), which
                # changes the scores the file would get from the official evaluation: said, not done silently
                used = len({int(i) for pred in preds for i in np.unique(pred) if i})
                print(f"warning: --pred {pred_seqs[name]}: ids up to {top} ({used} in use), more than the "
                      f"{MAX_PROPOSALS} proposals per sequence the DAVIS unsupervised protocol takes (davis2017-evaluation "
                      f"refuses the sequence); the {MAX_PROPOSALS} covering the most pixels are scored, the others "
                      f"left out. Number the proposals 1..{MAX_PROPOSALS} for scores the official evaluation gives",
                      file=sys.stderr)
        try:
            if unsupervised:
                from vosrt.sdk.instance_metrics import evaluate_unsupervised_sequence
                scores.extend(evaluate_unsupervised_sequence(preds, gts, name))
            else:
                scores.extend(evaluate_sequence(preds, gts, name, skip_first_last=skip_first_last))
        except UnknownObjectError as err:
            raise UserError(f"--pred {pred_seqs[name]}: {err}") from None
    if not scores:
        raise UserError(f"--gt {gt_root}: no sequence could be scored: no first ground-truth frame has an object "
                        "(object ids 1..254 in a sequence's first PNG; 255 is void unless it is a sequence's only id)")
    if late:
        print(f"note: {len(late)} sequence(s) ({', '.join(late[:3])}{', ...' if len(late) > 3 else ''}) have objects "
              "that enter after the first frame: each object is scored on every frame after the one that first "
              "annotates it, the last frame included", file=sys.stderr)
    if binary:
        print(f"note: {len(binary)} sequence(s) ({', '.join(binary[:3])}{', ...' if len(binary) > 3 else ''}) have "
              "0/255 ground truth (DAVIS 2016 foreground masks): 255 is scored as their one object, object 1"
              + ("" if unsupervised else " (a predicted 255 counts as 1)"), file=sys.stderr)
    return scores


def _csv_path(args, default: Path) -> Path:
    """Where the table goes (``--csv``, else ``default``), checked before any scoring (minutes on a dataset): a
    folder, or a place no file can be written, is refused now rather than after the table is printed."""
    from vosrt.sdk.package import writable_folder

    out = Path(args.csv) if args.csv else default
    if out.is_dir():
        raise UserError(f"--csv {out} is a folder; give a file name, e.g. --csv {out / 'metrics.csv'}")
    if args.csv or out.parent.is_dir():   # the default's folder is --pred's, whose absence is said in its terms
        writable_folder(out.parent, "--csv" if args.csv else f"--csv (default {out})",
                        "--csv FILE in a folder you can write")
    return out


def _write_csv(out: Path, header: list, rows: list) -> None:
    """Written beside ``out`` and renamed onto it: a link planted at that name (in a predictions folder from
    elsewhere) is replaced, not written through (it overwrote the file the link named)."""
    from vosrt.sdk.package import replace_file

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        replace_file(out, write)
    except OSError as err:
        raise UserError(f"--csv: cannot write {out}: {err}") from None
    print(f"wrote {out}")


def _run_vis(args) -> int:
    import json

    from vosrt.sdk.instance_metrics import check_vis_inputs, vis_average_precision

    loaded = []
    for flag, path in (("--gt", Path(args.gt)), ("--pred", Path(args.pred))):
        try:
            loaded.append(json.loads(path.read_text()))
        except (OSError, ValueError) as err:
            raise UserError(f"{flag} {path}: expected a YouTube-VIS JSON file ({err})") from None
    gt, results = loaded
    out = _csv_path(args, Path(args.pred).with_suffix(".metrics.csv"))
    if isinstance(gt, dict) and "videos" in gt and gt.get("annotations") is None:
        # the valid / test JSONs of YouTube-VIS and OVIS: frames and categories, the ground truth kept private
        raise UserError(f"--gt {args.gt} has no annotations: YouTube-VIS and OVIS keep the ground truth of their "
                        "valid and test splits private, so their JSONs list only videos and categories. Score "
                        f"{args.pred} there: zip it as results.json and submit it to the challenge's evaluation "
                        "server (CodaLab); or score here with --gt an annotation file that has them (e.g. videos "
                        "of the train split held out from training)")
    if not isinstance(gt, dict) or "videos" not in gt or "annotations" not in gt:
        raise UserError(f"--gt {args.gt}: expected a YouTube-VIS annotation file (with 'videos' and 'annotations')")
    if isinstance(results, dict) and "annotations" in results:
        results = results["annotations"]
    if not isinstance(results, list):
        raise UserError(f"--pred {args.pred}: expected a list of results (video_id, category_id, score, segmentations)")
    check_vis_inputs(gt, results, f"--gt {args.gt}", f"--pred {args.pred}")
    known = {c.get("id") for c in gt["categories"] if isinstance(c, dict)}
    strays = sorted({r["category_id"] for r in results} - known, key=str)
    if strays:
        print(f"warning: --pred {args.pred}: {sum(r['category_id'] in strays for r in results)} result(s) have "
              f"category_id(s) {', '.join(map(str, strays[:5]))}, which the ground truth does not define (it has "
              f"{len(known)}: {', '.join(map(str, sorted(known, key=str)[:5]))}{', ...' if len(known) > 5 else ''}); "
              "they cannot match anything (map the model's categories to the dataset's ids)", file=sys.stderr)
    metrics = vis_average_precision(gt, results, checked=True)   # checked above, naming the files
    for name, value in metrics.items():
        print(f"{name:>5}  {value:6.3f}")
    _write_csv(out, list(metrics), [[f"{v:.6f}" for v in metrics.values()]])
    return 0


def _run_mots(args) -> int:
    from vosrt.sdk.instance_metrics import mots_metrics

    out = _csv_path(args, Path(args.pred) / "metrics.csv")
    results = mots_metrics(args.gt, args.pred)
    if not results:
        raise UserError(f"--gt {args.gt}, --pred {args.pred}: no car or pedestrian is annotated or predicted in "
                        "any sequence; nothing to score")
    names = list(next(iter(results.values())))
    print(f"{'class':<10}  " + "  ".join(f"{n:>6}" for n in names))
    for cls, values in results.items():
        print(f"{cls:<10}  " + "  ".join(f"{values[n]:6.3f}" for n in names))
    _write_csv(out, ["class"] + names,
               [[cls] + [f"{v[n]:.6f}" for n in names] for cls, v in results.items()])
    return 0


def run(args) -> int:
    """Entry point of ``vosrt eval``."""
    task = getattr(args, "task", "semi-supervised")
    if getattr(args, "sequences", None) and task in ("vis", "mots"):
        raise UserError(f"--sequences is for the PNG tasks (semi-supervised, unsupervised); --task {task} scores every "
                        "video of --gt: give --gt " + ("an annotation file of the videos to score" if task == "vis" else
                                                       "a folder holding the <sequence>.txt files to score"))
    if task == "vis":
        return _run_vis(args)
    if task == "mots":
        return _run_mots(args)
    pred_root, gt_root = Path(args.pred), Path(args.gt)
    out = _csv_path(args, pred_root / "metrics.csv")
    scores = evaluate_folders(pred_root, gt_root, skip_first_last=not args.all_frames,
                              unsupervised=task == "unsupervised", progress=not getattr(args, "no_progress", False),
                              only=Path(args.sequences) if getattr(args, "sequences", None) else None)
    columns = ("J", "F", "J&F", *RECALL_DECAY)   # recall and decay after J&F, as the DAVIS evaluation reports
    rows = [(s.sequence, str(s.object_id), s.j_mean, s.f_mean, s.jf, *s.j_recall_decay, *s.f_recall_decay)
            for s in scores]
    for name in dict.fromkeys(s.sequence for s in scores):
        mean = summarize([s for s in scores if s.sequence == name], recall_decay=True)
        rows.append((name, "mean", *(mean[c] for c in columns)))
    total = summarize(scores, recall_decay=True)
    rows.append(("all", "mean", *(total[c] for c in columns)))

    width = max([len("sequence")] + [len(r[0]) for r in rows])
    print(f"{'sequence':<{width}}  {'object':>6}" + "".join(f"  {c:>6}" for c in columns[:3])
          + "".join(f"  {c:>8}" for c in columns[3:]))
    for seq, obj, *values in rows:
        print(f"{seq:<{width}}  {obj:>6}" + "".join(f"  {v:6.3f}" for v in values[:3])
              + "".join(f"  {v:8.3f}" for v in values[3:]))
    _write_csv(out, ["sequence", "object", *columns],
               [(s, o, *(f"{v:.6f}" for v in values)) for s, o, *values in rows])
    return 0 if np.isfinite(total["J&F"]) else 1
