package bench

import (
	"errors"
	"fmt"
	"image/color"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// drawChart draws one column of a section as a PNG bar chart: one bar per
// row with numbers, the median over runs, its value written above it.
func drawChart(s *Section, c chart, file string) error {
	labels, values := medians(s, c.Column)
	if len(values) == 0 {
		return errors.New("no row has numbers to draw")
	}
	p := plot.New()
	p.Title.Text = c.Title
	p.Y.Label.Text = c.YLabel
	p.Y.Min = 0
	bars, err := plotter.NewBarChart(plotter.Values(values), vg.Points(28))
	if err != nil {
		return err
	}
	bars.Color = color.RGBA{R: 0x2b, G: 0x6c, B: 0xb0, A: 0xff}
	bars.LineStyle.Width = 0
	p.Add(bars)
	p.NominalX(labels...)
	p.X.Tick.Label.Rotation = 0.35
	p.X.Tick.Label.XAlign = draw.XRight

	digits := 0
	for _, col := range s.Columns {
		if col.Key == c.Column {
			digits = col.Digits
		}
	}
	top := 0.0
	xy := make(plotter.XYs, len(values))
	text := make([]string, len(values))
	for i, v := range values {
		xy[i] = plotter.XY{X: float64(i), Y: v}
		text[i] = strconv.FormatFloat(v, 'f', digits, 64)
		top = max(top, v)
	}
	lbl, err := plotter.NewLabels(plotter.XYLabels{XYs: xy, Labels: text})
	if err != nil {
		return err
	}
	for i := range lbl.TextStyle {
		lbl.TextStyle[i].XAlign = draw.XCenter
		lbl.TextStyle[i].YAlign = draw.YBottom
	}
	p.Add(lbl)
	p.Y.Max = top * 1.15
	width := vg.Length(max(4, 1.1*float64(len(values)))) * vg.Inch
	if err := p.Save(width, 3.5*vg.Inch, file); err != nil {
		return fmt.Errorf("save %s: %w", file, err)
	}
	return nil
}
